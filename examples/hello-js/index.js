// The smallest stoke function: a module worker whose fetch() answers every request.
export default {
	async fetch(request, env, ctx) {
		const url = new URL(request.url);
		const who = url.searchParams.get('name') || env.NAME || 'world';
		return new Response(`Hello, ${who}! You sent ${request.method} ${url.pathname}\n`, {
			headers: { 'content-type': 'text/plain; charset=utf-8' },
		});
	},
};
