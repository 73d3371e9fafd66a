/* Timers live only as long as the request (and its ctx.waitUntil work) that set them.
 * The shim's loop asks timersNext() how long to sleep and calls timersRun() for each
 * due timer, draining microtasks in between, as the HTML event loop does per task. */

/* Live timers by id, and a binary min-heap ordered by (due time, id) so thousands of
 * timers cost O(log n) each; cleared timers stay in the heap, marked, until they
 * reach the top. */
const timers = new Map();
let heap = [];
let timerSeq = 0;

const before = (a, b) => a.at < b.at || (a.at === b.at && a.id < b.id);

function heapPush(t) {
	let i = heap.push(t) - 1;
	while (i > 0) {
		const p = (i - 1) >> 1;
		if (!before(heap[i], heap[p])) break;
		[heap[i], heap[p]] = [heap[p], heap[i]];
		i = p;
	}
}

function heapPop() {
	const top = heap[0], last = heap.pop();
	if (heap.length) {
		heap[0] = last;
		for (let i = 0; ;) {
			const l = 2 * i + 1, r = l + 1;
			let m = i;
			if (l < heap.length && before(heap[l], heap[m])) m = l;
			if (r < heap.length && before(heap[r], heap[m])) m = r;
			if (m === i) break;
			[heap[i], heap[m]] = [heap[m], heap[i]];
			i = m;
		}
	}
	return top;
}

/* Cheap when there is nothing to clear: it runs twice per request. */
function clearTimers() {
	if (timers.size) timers.clear();
	if (heap.length) heap = [];
}

function addTimer(fn, delay, args, repeat) {
	if (typeof fn !== 'function')
		throw new TypeError('timer callback must be a function');
	const ms = Math.max(0, Number(delay) || 0);
	const t = { id: ++timerSeq, fn, args, at: native.now() + ms,
		every: repeat ? Math.max(ms, 1) : 0, live: true };
	timers.set(t.id, t);
	heapPush(t);
	native.drainDue();	/* the shim calls drain() only after this or waitUntil */
	return t.id;
}

function setTimeout(fn, delay = 0, ...args) { return addTimer(fn, delay, args, false); }
function setInterval(fn, delay = 0, ...args) { return addTimer(fn, delay, args, true); }

function clearTimeout(id) {
	const t = timers.get(Number(id));
	if (!t) return;
	t.live = false;
	timers.delete(t.id);
}
const clearInterval = clearTimeout;

function queueMicrotask(fn) {
	if (typeof fn !== 'function')
		throw new TypeError('queueMicrotask: callback must be a function');
	Promise.resolve().then(() => {
		try { fn(); } catch (e) { reportError(e); }
	});
}

/* The earliest live timer, dropping cleared ones on the way. */
function nextTimer() {
	while (heap.length && !heap[0].live) heapPop();
	return heap.length ? heap[0] : null;
}

function timersNext() {
	const t = nextTimer();
	if (!t) return -1;
	const d = t.at - native.now();
	return d <= 0 ? 0 : d;
}

function timersRun() {
	const t = nextTimer();
	if (!t) return;
	heapPop();
	if (t.every) {
		t.at = native.now() + t.every;
		heapPush(t);
	} else {
		t.live = false;
		timers.delete(t.id);
	}
	try { t.fn(...t.args); } catch (e) { reportError(e); }
}
