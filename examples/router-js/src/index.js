// A real npm routing framework (Hono) bundled by esbuild into one ES module that runs
// unchanged in stoke's isolate tier. Build with ./build.sh (npm install + esbuild).
import { Hono } from 'hono';

const app = new Hono();

app.get('/', (c) => c.text('router-js: try /hello/you, /json or POST /echo'));
app.get('/hello/:name', (c) => c.text(`Hello, ${c.req.param('name')}!`));
app.get('/json', (c) => c.json({ ok: true, query: c.req.query('q') ?? null }));
app.post('/echo', async (c) => c.json({ received: await c.req.json() }, 201));
app.notFound((c) => c.json({ error: 'not found', path: c.req.path }, 404));

export default app;
