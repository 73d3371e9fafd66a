/* Timers live only as long as the request (and its ctx.waitUntil work) that set them.
 * The shim's loop asks timersNext() how long to sleep and calls timersRun() for each
 * due timer, draining microtasks in between, as the HTML event loop does per task. */

const timers = new Map();
let timerSeq = 0;

function addTimer(fn, delay, args, repeat) {
	if (typeof fn !== 'function')
		throw new TypeError('timer callback must be a function');
	const ms = Math.max(0, Number(delay) || 0);
	const id = ++timerSeq;
	timers.set(id, { fn, args, at: native.now() + ms, every: repeat ? Math.max(ms, 1) : 0 });
	return id;
}

function setTimeout(fn, delay = 0, ...args) { return addTimer(fn, delay, args, false); }
function setInterval(fn, delay = 0, ...args) { return addTimer(fn, delay, args, true); }
function clearTimeout(id) { timers.delete(Number(id)); }
const clearInterval = clearTimeout;

function queueMicrotask(fn) {
	if (typeof fn !== 'function')
		throw new TypeError('queueMicrotask: callback must be a function');
	Promise.resolve().then(() => {
		try { fn(); } catch (e) { reportError(e); }
	});
}

function nextTimer() {
	let best = null;
	for (const [id, t] of timers)
		if (!best || t.at < best[1].at) best = [id, t];
	return best;
}

function timersNext() {
	const best = nextTimer();
	if (!best) return -1;
	const d = best[1].at - native.now();
	return d <= 0 ? 0 : d;
}

function timersRun() {
	const best = nextTimer();
	if (!best) return;
	const [id, t] = best;
	if (t.every) t.at = native.now() + t.every;
	else timers.delete(id);
	try { t.fn(...t.args); } catch (e) { reportError(e); }
}
