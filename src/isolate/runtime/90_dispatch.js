/* The hooks the shim calls, and the globals every tenant context starts with. */

let waitList = [];

class ExecutionContext {
	waitUntil(p) {
		waitList.push(Promise.resolve(p).catch(reportError));
		native.drainDue();
	}
	passThroughOnException() {}
}

/* Captured at start-up: tenants can replace the static methods, not these bindings. */
const responseWire = Response[kWire];
const ResponseClass = Response;

/* Something other than a Response becomes status 0 with the reason as its body: the
 * shim answers 500 bad_response with that text (it names a type, nothing of the value). */
function toWire(r) {
	if (!(r instanceof ResponseClass))
		return [0, [], 'fetch() must return a Response, not ' +
			(r === null ? 'null' : typeof r)];
	const wire = responseWire(r);
	/* A redefined status would be ignored on the wire; refuse it instead. */
	if (r.status !== wire[0]) throw new TypeError('the Response status was redefined');
	return wire;
}

/* dispatch(handler, method, url, [name, value...], bodyLength|null, env) */
function dispatch(handler, method, url, flat, bodyLen, env) {
	clearTimers();
	if (waitList.length) waitList = [];
	/* GET and HEAD have no body (Fetch: their body is null). An empty one stays on
	 * V8's heap: handing it to C++ would give it a separate backing store, a malloc
	 * and a memset per request. */
	let body = null;
	if (bodyLen !== null && (bodyLen || (method !== 'GET' && method !== 'HEAD'))) {
		body = new Uint8Array(bodyLen);
		if (bodyLen) native.readBody(body);
	}
	const req = new Request(kInternal, { method, url, flat, body });
	return Promise.resolve(handler.fetch(req, env, new ExecutionContext())).then(toWire);
}

/* After the response: a promise for the waitUntil work, or nothing when there is none
 * (then timers the request left behind are dropped now). The shim calls it only if
 * waitUntil() or a timer called native.drainDue() since dispatch(). */
function drain() {
	if (!waitList.length) {
		clearTimers();
		return undefined;
	}
	const list = waitList;
	waitList = [];
	return Promise.allSettled(list).then(clearTimers);
}

const GLOBALS = {
	DOMException, TextEncoder, TextDecoder, atob, btoa, console, setTimeout, clearTimeout,
	setInterval, clearInterval, queueMicrotask, crypto, structuredClone, Headers, Request,
	Response, URL, URLSearchParams, Event, EventTarget, Blob, FormData, AbortController,
	AbortSignal, fetch, reportError,
};
for (const [k, v] of Object.entries(GLOBALS))
	Object.defineProperty(globalThis, k, { value: v, writable: true, configurable: true,
					       enumerable: false });
Object.defineProperty(globalThis, 'self', { value: globalThis, writable: true,
					    configurable: true });
