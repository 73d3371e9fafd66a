/* console.*: lines go to the function's log stream (stdout or stderr) through native.log. */

function inspect(v, depth = 0, seen = new Set()) {
	switch (typeof v) {
	case 'string': return depth ? `'${v}'` : v;
	case 'bigint': return `${v}n`;
	case 'symbol': return v.toString();
	case 'function': return `[Function: ${v.name || '(anonymous)'}]`;
	case 'object': break;
	default: return String(v);
	}
	if (v === null) return 'null';
	if (seen.has(v)) return '[Circular]';
	if (v instanceof Error) return v.stack || `${v.name}: ${v.message}`;
	if (v instanceof Date) return isNaN(v) ? 'Invalid Date' : v.toISOString();
	if (v instanceof RegExp) return String(v);
	if (depth > 2) return Array.isArray(v) ? '[Array]' : '[Object]';
	seen.add(v);
	let out;
	if (Array.isArray(v) || ArrayBuffer.isView(v)) {
		const items = Array.from(v, (x) => inspect(x, depth + 1, seen));
		const pre = Array.isArray(v) ? '' : `${v.constructor.name}(${v.length}) `;
		out = items.length ? `${pre}[ ${items.join(', ')} ]` : `${pre}[]`;
	} else if (v instanceof Map) {
		const items = [...v].map(([k, x]) =>
			`${inspect(k, depth + 1, seen)} => ${inspect(x, depth + 1, seen)}`);
		out = `Map(${v.size}) {${items.length ? ` ${items.join(', ')} ` : ''}}`;
	} else if (v instanceof Set) {
		const items = [...v].map((x) => inspect(x, depth + 1, seen));
		out = `Set(${v.size}) {${items.length ? ` ${items.join(', ')} ` : ''}}`;
	} else {
		const items = Object.keys(v).map((k) => {
			const key = /^[A-Za-z_$][\w$]*$/.test(k) ? k : `'${k}'`;
			return `${key}: ${inspect(v[k], depth + 1, seen)}`;
		});
		const name = v.constructor && v.constructor !== Object && v.constructor.name;
		const pre = name ? `${name} ` : '';
		out = items.length ? `${pre}{ ${items.join(', ')} }` : `${pre}{}`;
	}
	seen.delete(v);
	return out;
}

/* printf-style substitutions as in the Console Standard's Formatter. */
function formatArgs(args) {
	if (!args.length) return '';
	let first = args[0], rest = 1;
	if (typeof first === 'string' && first.includes('%')) {
		first = first.replace(/%[sdifoOjc%]/g, (m) => {
			if (m === '%%') return '%';
			if (rest >= args.length) return m;
			const a = args[rest++];
			switch (m) {
			case '%s': return typeof a === 'string' ? a : inspect(a, 1);
			case '%d': case '%i':
				return typeof a === 'symbol' ? 'NaN' : String(parseInt(a, 10));
			case '%f': return String(parseFloat(a));
			case '%j': try { return JSON.stringify(a); } catch { return '[Circular]'; }
			case '%c': return '';
			default: return inspect(a, 1);
			}
		});
	} else {
		first = inspect(first);
	}
	return [first, ...args.slice(rest).map((a) => inspect(a))].join(' ');
}

const consoleCounts = new Map(), consoleTimers = new Map();
const out = (...a) => native.log(false, formatArgs(a));
const err = (...a) => native.log(true, formatArgs(a));
const console = {
	log: out, info: out, debug: out, trace: out,
	warn: err, error: err,
	assert(cond, ...a) { if (!cond) err('Assertion failed' + (a.length ? ':' : ''), ...a); },
	count(label = 'default') {
		const n = (consoleCounts.get(label) || 0) + 1;
		consoleCounts.set(label, n);
		out(`${label}: ${n}`);
	},
	countReset(label = 'default') { consoleCounts.delete(label); },
	time(label = 'default') { consoleTimers.set(label, native.now()); },
	timeEnd(label = 'default') {
		const t = consoleTimers.get(label);
		consoleTimers.delete(label);
		if (t !== undefined) out(`${label}: ${(native.now() - t).toFixed(3)}ms`);
	},
	table: out, dir: out, group: out, groupEnd() {},
};

function reportError(e) {
	err('Uncaught', e);
}
