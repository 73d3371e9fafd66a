/* Headers, Request and Response from the Fetch Standard (bodies are held in memory:
 * a string, a Uint8Array or null). */

/* RFC 9110 token characters, as a table: no regexp to compile on a cold start. */
const TOKEN_CHARS = new Uint8Array(128);
for (const c of "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
	TOKEN_CHARS[c.charCodeAt(0)] = 1;
const TOKEN = { test(s) {
	if (!s.length) return false;
	for (let i = 0; i < s.length; i++) {
		const c = s.charCodeAt(i);
		if (c >= 128 || !TOKEN_CHARS[c]) return false;
	}
	return true;
} };

function headerName(n) {
	n = String(n);
	if (!TOKEN.test(n)) throw new TypeError(`Invalid header name: "${n}"`);
	return n.toLowerCase();
}

const httpSpace = (c) => c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;

function headerValue(v) {
	v = String(v);
	let a = 0, b = v.length;
	while (a < b && httpSpace(v.charCodeAt(a))) a++;
	while (b > a && httpSpace(v.charCodeAt(b - 1))) b--;
	if (a || b < v.length) v = v.slice(a, b);
	for (let i = 0; i < v.length; i++) {
		const c = v.charCodeAt(i);
		if (c === 0 || c === 0x0a || c === 0x0d)
			throw new TypeError(`Invalid header value: "${v}"`);
	}
	return v;
}

const kGuard = Symbol('guard');
/* Internal accessors for the wire form of a Response: they read private fields, so a
 * tenant redefining status or headers on its Response cannot change what is sent. */
const kFlat = Symbol('flat');
const kRaw = Symbol('raw');
const kWire = Symbol('wire');

class Headers {
	#map = new Map();	/* lower-case name -> combined value */
	#cookies = [];		/* set-cookie values stay separate */
	constructor(init) {
		if (init === undefined || init === null) return;
		if (init instanceof Headers) {
			/* Copy the fields: going through forEach would split and then lose the
			 * set-cookie values, which iterate one by one. */
			for (const [k, v] of init.#map) this.#map.set(k, v);
			this.#cookies = [...init.#cookies];
		} else if (typeof init === 'object' &&
			   typeof init[Symbol.iterator] === 'function') {
			for (const pair of init) {
				const p = [...pair];
				if (p.length !== 2)
					throw new TypeError('Headers: each pair needs 2 items');
				this.append(p[0], p[1]);
			}
		} else if (typeof init === 'object') {
			for (const k of Object.keys(init)) this.append(k, init[k]);
		} else {
			throw new TypeError('Headers: init must be an object or pairs');
		}
	}
	/* Gateway headers are already lower-case and valid. */
	static [kGuard](flat) {
		const h = new Headers();
		for (let i = 0; i + 1 < flat.length; i += 2) h.#add(flat[i], flat[i + 1]);
		return h;
	}
	static [kFlat](h) {
		const out = [];
		for (const k of [...h.#map.keys()].sort()) {
			if (k === 'set-cookie') for (const c of h.#cookies) out.push(k, c);
			else out.push(k, h.#map.get(k));
		}
		return out;
	}
	#add(n, v) {
		if (n === 'set-cookie') this.#cookies.push(v);
		const old = this.#map.get(n);
		this.#map.set(n, old === undefined ? v : `${old}, ${v}`);
	}
	append(n, v) { this.#add(headerName(n), headerValue(v)); }
	delete(n) {
		n = headerName(n);
		this.#map.delete(n);
		if (n === 'set-cookie') this.#cookies = [];
	}
	get(n) {
		const v = this.#map.get(headerName(n));
		return v === undefined ? null : v;
	}
	getSetCookie() { return [...this.#cookies]; }
	has(n) { return this.#map.has(headerName(n)); }
	set(n, v) {
		n = headerName(n);
		v = headerValue(v);
		this.#map.set(n, v);
		if (n === 'set-cookie') this.#cookies = [v];
	}
	forEach(cb, thisArg) {
		for (const [k, v] of this) cb.call(thisArg, v, k, this);
	}
	*entries() {
		for (const k of [...this.#map.keys()].sort()) {
			if (k === 'set-cookie') for (const c of this.#cookies) yield [k, c];
			else yield [k, this.#map.get(k)];
		}
	}
	*keys() { for (const [k] of this.entries()) yield k; }
	*values() { for (const [, v] of this.entries()) yield v; }
	[Symbol.iterator]() { return this.entries(); }
	get [Symbol.toStringTag]() { return 'Headers'; }
}

/* Returns [body, default content-type] for a BodyInit. */
function extractBody(init) {
	if (init === null || init === undefined) return [null, null];
	if (typeof init === 'string') return [init, 'text/plain;charset=UTF-8'];
	if (init instanceof URLSearchParams)
		return [init.toString(), 'application/x-www-form-urlencoded;charset=UTF-8'];
	if (init instanceof ArrayBuffer) return [new Uint8Array(init.slice(0)), null];
	if (ArrayBuffer.isView(init)) {
		const end = init.byteOffset + init.byteLength;
		return [new Uint8Array(init.buffer.slice(init.byteOffset, end)), null];
	}
	if (typeof Blob === 'function' && init instanceof Blob)
		return [init._bytes, init.type || null];
	return [String(init), 'text/plain;charset=UTF-8'];
}

class Body {
	#body; #used = false;
	_initBody(body) { this.#body = body; }
	_rawBody() { return this.#body; }
	static [kRaw](b) {
		if (b.#used) throw new TypeError('the Response body has already been used');
		return b.#body;
	}
	get bodyUsed() { return this.#used; }
	get body() { return this.#body === null ? null : bodyStream(this.#body); }
	#take() {
		if (this.#used) return Promise.reject(new TypeError('Body has already been used'));
		this.#used = true;
		return Promise.resolve(this.#body);
	}
	async text() {
		const b = await this.#take();
		return b === null ? '' : typeof b === 'string' ? b : new TextDecoder().decode(b);
	}
	async arrayBuffer() {
		const b = await this.#take();
		if (b === null) return new ArrayBuffer(0);
		const u = typeof b === 'string' ? utf8Encode(b) : b;
		return u.buffer.slice(u.byteOffset, u.byteOffset + u.byteLength);
	}
	async bytes() { return new Uint8Array(await this.arrayBuffer()); }
	async json() { return JSON.parse(await this.text()); }
	async formData() {
		const t = await this.text();
		const ct = this.headers.get('content-type') || '';
		if (!ct.startsWith('application/x-www-form-urlencoded'))
			throw new TypeError('formData: only form-urlencoded bodies are supported');
		const fd = new FormData();
		for (const [k, v] of new URLSearchParams(t)) fd.append(k, v);
		return fd;
	}
	async blob() {
		const type = this.headers.get('content-type') || '';
		return new Blob([await this.arrayBuffer()], { type });
	}
}

/* A one-chunk ReadableStream-like object, enough for code that reads body.getReader(). */
function bodyStream(b) {
	let done = false;
	const chunk = () => (typeof b === 'string' ? utf8Encode(b) : b);
	return {
		locked: false,
		getReader() {
			return {
				read() {
					if (done)
						return Promise.resolve({ done: true });
					done = true;
					return Promise.resolve({ done: false, value: chunk() });
				},
				releaseLock() {},
				cancel() { done = true; return Promise.resolve(); },
				closed: Promise.resolve(),
			};
		},
		async *[Symbol.asyncIterator]() { if (!done) { done = true; yield chunk(); } },
	};
}

const METHODS = ['DELETE', 'GET', 'HEAD', 'OPTIONS', 'POST', 'PUT', 'PATCH'];

function normMethod(m) {
	m = String(m);
	if (!TOKEN.test(m)) throw new TypeError(`Invalid method: "${m}"`);
	const up = m.toUpperCase();
	if (up === 'CONNECT' || up === 'TRACE' || up === 'TRACK')
		throw new TypeError(`Forbidden method: "${m}"`);
	return METHODS.includes(up) && up !== 'PATCH' ? up : m;
}

const kInternal = Symbol('internal');

class Request extends Body {
	#method; #url; #headers; #flat; #redirect; #signal;
	constructor(input, init = {}) {
		super();
		if (input === kInternal) {
			/* From the gateway: [name, value, ...], made a Headers on first use
			 * (most handlers never look at most requests' headers). */
			this.#method = init.method;
			this.#url = init.url;
			this.#flat = init.flat;
			this.#redirect = 'follow';
			this._initBody(init.body);
			return;
		}
		let base = null;
		if (input instanceof Request) {
			base = input;
			this.#url = input.url;
		} else {
			this.#url = new URL(String(input)).href;
		}
		init = init || {};
		this.#method = init.method !== undefined ? normMethod(init.method)
			: base ? base.method : 'GET';
		this.#headers = new Headers(init.headers !== undefined ? init.headers
			: base ? base.headers : undefined);
		this.#redirect = init.redirect || (base ? base.redirect : 'follow');
		this.#signal = init.signal || (base ? base.signal : null);
		let body = null;
		if (init.body !== undefined && init.body !== null) {
			if (this.#method === 'GET' || this.#method === 'HEAD')
				throw new TypeError('GET and HEAD requests have no body');
			const [b, type] = extractBody(init.body);
			body = b;
			if (type && !this.#headers.has('content-type'))
				this.#headers.set('content-type', type);
		} else if (base && init.body === undefined) {
			if (base.bodyUsed)
				throw new TypeError('Request body has already been used');
			body = base._rawBody();
		}
		this._initBody(body);
	}
	get method() { return this.#method; }
	get url() { return this.#url; }
	get headers() { return this.#headers || (this.#headers = Headers[kGuard](this.#flat)); }
	get redirect() { return this.#redirect; }
	get signal() { return this.#signal || (this.#signal = new AbortController().signal); }
	get cf() { return undefined; }
	clone() {
		if (this.bodyUsed)
			throw new TypeError('Request.clone: body has already been used');
		const r = new Request(kInternal, { method: this.#method, url: this.#url,
			body: this._rawBody() });
		r.#headers = new Headers(this.headers);
		return r;
	}
	get [Symbol.toStringTag]() { return 'Request'; }
}

const NULL_BODY = [101, 103, 204, 205, 304];
const REDIRECTS = [301, 302, 303, 307, 308];

class Response extends Body {
	#status; #statusText; #headers; #type = 'default'; #url = '';
	constructor(body = null, init = {}) {
		super();
		init = init || {};
		const status = init.status === undefined ? 200 : Number(init.status);
		if (!Number.isInteger(status) || status < 200 || status > 599)
			throw new RangeError(`Response: status ${init.status} is not in 200-599`);
		this.#status = status;
		this.#statusText = init.statusText === undefined ? '' : String(init.statusText);
		this.#headers = new Headers(init.headers);
		const [b, type] = extractBody(body);
		if (b !== null && NULL_BODY.includes(status))
			throw new TypeError(`Response with status ${status} cannot have a body`);
		if (type && !this.#headers.has('content-type'))
			this.#headers.set('content-type', type);
		this._initBody(b);
	}
	static json(data, init = {}) {
		const text = JSON.stringify(data);
		if (text === undefined) throw new TypeError('Response.json: data is not JSON');
		const r = new Response(text, init);
		if (!(init && init.headers && new Headers(init.headers).has('content-type')))
			r.headers.set('content-type', 'application/json');
		return r;
	}
	static redirect(url, status = 302) {
		const href = new URL(String(url)).href;
		if (!REDIRECTS.includes(status))
			throw new RangeError(`Response.redirect: invalid status ${status}`);
		return new Response(null, { status, headers: { location: href } });
	}
	static error() {
		const r = new Response(null, { status: 200 });
		r.#type = 'error';
		r.#status = 0;
		return r;
	}
	get status() { return this.#status; }
	get statusText() { return this.#statusText; }
	get ok() { return this.#status >= 200 && this.#status <= 299; }
	get headers() { return this.#headers; }
	get type() { return this.#type; }
	get url() { return this.#url; }
	get redirected() { return false; }
	clone() {
		if (this.bodyUsed)
			throw new TypeError('Response.clone: body has already been used');
		return new Response(this._rawBody(), { status: this.#status,
			statusText: this.#statusText, headers: this.#headers });
	}
	get [Symbol.toStringTag]() { return 'Response'; }
	static [kWire](r) { return [r.#status, Headers[kFlat](r.#headers), Body[kRaw](r)]; }
}

const abortError = () => new DOMException('aborted', 'AbortError');

class AbortSignal extends EventTarget {
	aborted = false; reason = undefined;
	throwIfAborted() { if (this.aborted) throw this.reason; }
	static abort(reason) {
		const s = new AbortSignal();
		s.aborted = true;
		s.reason = reason === undefined ? abortError() : reason;
		return s;
	}
}

class AbortController {
	signal = new AbortSignal();
	abort(reason) {
		if (this.signal.aborted) return;
		this.signal.aborted = true;
		this.signal.reason = reason === undefined ? abortError() : reason;
		this.signal.dispatchEvent(new Event('abort'));
	}
}

async function fetch() {
	throw new TypeError('fetch: outbound requests are not available in this runtime');
}
