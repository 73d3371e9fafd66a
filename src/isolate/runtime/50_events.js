/* Event, EventTarget, Blob and FormData: the small parts of the DOM that fetch code uses. */

class Event {
	#type;
	constructor(type) { this.#type = String(type); this.defaultPrevented = false; }
	get type() { return this.#type; }
	preventDefault() { this.defaultPrevented = true; }
}

class EventTarget {
	#listeners = new Map();
	addEventListener(type, fn) {
		if (typeof fn !== 'function' && !(fn && typeof fn.handleEvent === 'function'))
			return;
		if (!this.#listeners.has(type)) this.#listeners.set(type, []);
		this.#listeners.get(type).push(fn);
	}
	removeEventListener(type, fn) {
		const l = this.#listeners.get(type);
		if (l) this.#listeners.set(type, l.filter((x) => x !== fn));
	}
	dispatchEvent(ev) {
		for (const fn of this.#listeners.get(ev.type) || []) {
			try {
				if (typeof fn === 'function') fn.call(this, ev);
				else fn.handleEvent(ev);
			} catch (e) { reportError(e); }
		}
		const on = this['on' + ev.type];
		if (typeof on === 'function') on.call(this, ev);
		return !ev.defaultPrevented;
	}
}

class Blob {
	#bytes; #type;
	constructor(parts = [], options = {}) {
		const chunks = [];
		for (const p of parts) {
			if (p instanceof Blob) chunks.push(p.#bytes);
			else if (p instanceof ArrayBuffer || ArrayBuffer.isView(p))
				chunks.push(viewBytes(p, 'Blob'));
			else chunks.push(utf8Encode(String(p)));
		}
		const n = chunks.reduce((a, c) => a + c.length, 0);
		this.#bytes = new Uint8Array(n);
		let off = 0;
		for (const c of chunks) { this.#bytes.set(c, off); off += c.length; }
		this.#type = options && options.type ? String(options.type).toLowerCase() : '';
	}
	get _bytes() { return this.#bytes.slice(); }
	get size() { return this.#bytes.length; }
	get type() { return this.#type; }
	slice(start = 0, end = this.size, type = '') {
		return new Blob([this.#bytes.slice(start, end)], { type });
	}
	async text() { return new TextDecoder().decode(this.#bytes); }
	async arrayBuffer() { return this.#bytes.slice().buffer; }
}

class FormData {
	#list = [];
	append(k, v) { this.#list.push([String(k), v instanceof Blob ? v : String(v)]); }
	delete(k) { this.#list = this.#list.filter(([n]) => n !== String(k)); }
	get(k) { const e = this.#list.find(([n]) => n === String(k)); return e ? e[1] : null; }
	getAll(k) { return this.#list.filter(([n]) => n === String(k)).map(([, v]) => v); }
	has(k) { return this.#list.some(([n]) => n === String(k)); }
	set(k, v) { this.delete(k); this.append(k, v); }
	forEach(cb, thisArg) { for (const [k, v] of this.#list) cb.call(thisArg, v, k, this); }
	*entries() { yield* this.#list.map((e) => [...e]); }
	*keys() { for (const [k] of this.#list) yield k; }
	*values() { for (const [, v] of this.#list) yield v; }
	[Symbol.iterator]() { return this.entries(); }
}
