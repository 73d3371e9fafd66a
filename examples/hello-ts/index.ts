// The TypeScript flavour of hello-js: stoke transpiles it with esbuild at deploy.
interface Env {
	NAME?: string;
}

interface Greeting {
	greeting: string;
	method: string;
	path: string;
}

function greet(request: Request, env: Env): Greeting {
	const url = new URL(request.url);
	const who: string = url.searchParams.get('name') ?? env.NAME ?? 'world';
	return { greeting: `Hello, ${who}!`, method: request.method, path: url.pathname };
}

export default {
	async fetch(request: Request, env: Env): Promise<Response> {
		return Response.json(greet(request, env));
	},
};
