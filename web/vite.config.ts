import { defineConfig } from "vite";

// The build is committed (web/dist) so `make run` serves the page without Node; content-hashed file names keep
// it deterministic, and `make gen-check` rebuilds it to catch drift.
export default defineConfig({
  server: { port: 5173, strictPort: true },
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, target: "es2022", assetsInlineLimit: 0 },
});
