#!/bin/sh
# Installs Hono from npm and bundles the app into dist/index.js, the entry stoke.json
# names. node_modules and dist are build products and stay out of git.
set -e
cd "$(dirname "$0")"
npm install --no-audit --no-fund --silent
esbuild src/index.js --bundle --format=esm --platform=neutral --target=es2022 \
	--outfile=dist/index.js --log-level=warning
