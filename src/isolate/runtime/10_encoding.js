/* TextEncoder, TextDecoder (UTF-8 only, per the Encoding Standard), atob, btoa. */

class DOMException extends Error {
	constructor(message = '', name = 'Error') {
		super(message);
		Object.defineProperty(this, 'name', { value: String(name), configurable: true,
						      writable: true });
	}
	get code() {
		const codes = { IndexSizeError: 1, NotFoundError: 8, NotSupportedError: 9,
			InvalidStateError: 11, SyntaxError: 12, InvalidCharacterError: 5,
			TypeMismatchError: 17, QuotaExceededError: 22, DataCloneError: 25,
			AbortError: 20, TimeoutError: 23 };
		return codes[this.name] || 0;
	}
}

function viewBytes(input, what) {
	if (input instanceof ArrayBuffer)
		return new Uint8Array(input);
	if (ArrayBuffer.isView(input))
		return new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
	throw new TypeError(`${what}: expected an ArrayBuffer or ArrayBufferView`);
}

function utf8Encode(s) {
	const u = new Uint8Array(native.utf8Length(s));

	native.utf8Write(s, u);
	return u;
}

/* The native decoder replaces bad sequences with U+FFFD; fatal mode needs to know
 * whether a U+FFFD was really in the input. */
function utf8Valid(u) {
	for (let i = 0; i < u.length;) {
		const b = u[i];
		let n, min;
		if (b < 0x80) { i++; continue; }
		if (b >= 0xc2 && b <= 0xdf) { n = 1; min = 0x80; }
		else if (b >= 0xe0 && b <= 0xef) { n = 2; min = 0x800; }
		else if (b >= 0xf0 && b <= 0xf4) { n = 3; min = 0x10000; }
		else return false;
		let cp = b & (0x3f >> n);
		for (let k = 1; k <= n; k++) {
			const c = u[i + k];
			if (c === undefined || (c & 0xc0) !== 0x80) return false;
			cp = (cp << 6) | (c & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
		i += n + 1;
	}
	return true;
}

class TextEncoder {
	get encoding() { return 'utf-8'; }
	encode(input = '') { return utf8Encode(String(input)); }
	encodeInto(source, dest) {
		const s = String(source);
		let read = 0, written = 0;
		for (const ch of s) {
			let cp = ch.codePointAt(0);
			if (cp >= 0xd800 && cp <= 0xdfff) cp = 0xfffd;
			const n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
			if (written + n > dest.length) break;
			if (n === 1) dest[written] = cp;
			else if (n === 2) {
				dest[written] = 0xc0 | (cp >> 6);
				dest[written + 1] = 0x80 | (cp & 0x3f);
			}
			else if (n === 3) {
				dest[written] = 0xe0 | (cp >> 12);
				dest[written + 1] = 0x80 | ((cp >> 6) & 0x3f);
				dest[written + 2] = 0x80 | (cp & 0x3f);
			} else {
				dest[written] = 0xf0 | (cp >> 18);
				dest[written + 1] = 0x80 | ((cp >> 12) & 0x3f);
				dest[written + 2] = 0x80 | ((cp >> 6) & 0x3f);
				dest[written + 3] = 0x80 | (cp & 0x3f);
			}
			written += n;
			read += ch.length;
		}
		return { read, written };
	}
}

class TextDecoder {
	#fatal; #ignoreBOM;
	constructor(label = 'utf-8', options = {}) {
		const l = String(label).trim().toLowerCase();
		if (l !== 'utf-8' && l !== 'utf8' && l !== 'unicode-1-1-utf-8')
			throw new RangeError(`TextDecoder: encoding "${label}" is not supported`);
		this.#fatal = !!(options && options.fatal);
		this.#ignoreBOM = !!(options && options.ignoreBOM);
	}
	get encoding() { return 'utf-8'; }
	get fatal() { return this.#fatal; }
	get ignoreBOM() { return this.#ignoreBOM; }
	decode(input, options) {
		if (input === undefined)
			return '';
		const u = viewBytes(input, 'TextDecoder.decode');
		let s = native.utf8Decode(u);
		if (this.#fatal && s.includes('\ufffd') && !utf8Valid(u))
			throw new TypeError('The encoded data was not valid for encoding utf-8');
		if (!this.#ignoreBOM && s.charCodeAt(0) === 0xfeff)
			s = s.slice(1);
		return s;
	}
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const B64_INDEX = new Map([...B64].map((c, i) => [c, i]));

function btoa(data) {
	if (arguments.length < 1) throw new TypeError('btoa: 1 argument required');
	const s = String(data);
	let out = '';
	for (let i = 0; i < s.length; i++)
		if (s.charCodeAt(i) > 0xff)
			throw new DOMException('btoa: string contains characters outside Latin1',
					       'InvalidCharacterError');
	for (let i = 0; i < s.length; i += 3) {
		const a = s.charCodeAt(i), b = s.charCodeAt(i + 1), c = s.charCodeAt(i + 2);
		out += B64[a >> 2] + B64[((a & 3) << 4) | (b >> 4 || 0) & 15];
		out += i + 1 < s.length ? B64[((b & 15) << 2) | (c >> 6 || 0) & 3] : '=';
		out += i + 2 < s.length ? B64[c & 63] : '=';
	}
	return out;
}

function atob(data) {
	if (arguments.length < 1) throw new TypeError('atob: 1 argument required');
	let s = String(data).replace(/[\t\n\f\r ]/g, '');
	if (s.length % 4 === 0) s = s.replace(/={1,2}$/, '');
	if (s.length % 4 === 1 || /[^A-Za-z0-9+/]/.test(s))
		throw new DOMException('atob: the string is not correctly encoded',
				       'InvalidCharacterError');
	let out = '', bits = 0, acc = 0;
	for (const c of s) {
		acc = (acc << 6) | B64_INDEX.get(c);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out += String.fromCharCode((acc >> bits) & 0xff);
		}
	}
	return out;
}
