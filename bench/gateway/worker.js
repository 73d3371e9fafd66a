// The trivial function both stoke and workerd serve in this benchmark.
export default {
  async fetch(request) {
    return new Response("Hello, world!\n", { headers: { "content-type": "text/plain" } });
  },
};
