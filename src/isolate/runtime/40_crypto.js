/* crypto.getRandomValues / randomUUID (WebCrypto) and structuredClone (HTML). */

const INT_ARRAYS = [Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array,
	Int32Array, Uint32Array, BigInt64Array, BigUint64Array];

const crypto = {
	getRandomValues(a) {
		if (!INT_ARRAYS.some((C) => a instanceof C))
			throw new DOMException('getRandomValues: needs an integer TypedArray',
					       'TypeMismatchError');
		if (a.byteLength > 65536)
			throw new DOMException('getRandomValues: more than 65536 bytes requested',
					       'QuotaExceededError');
		native.randomFill(a);
		return a;
	},
	randomUUID() {
		const b = new Uint8Array(16);
		native.randomFill(b);
		b[6] = (b[6] & 0x0f) | 0x40;
		b[8] = (b[8] & 0x3f) | 0x80;
		const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
		const parts = [h.slice(0, 8), h.slice(8, 12), h.slice(12, 16), h.slice(16, 20)];
		return [...parts, h.slice(20)].join('-');
	},
};

function structuredClone(value) {
	if (arguments.length < 1) throw new TypeError('structuredClone: 1 argument required');
	try {
		return native.clone(value);
	} catch (e) {
		throw new DOMException(e && e.message || 'could not be cloned', 'DataCloneError');
	}
}
