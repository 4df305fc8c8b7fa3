// Vite: dev server (proxying /ws to a running bridge), production build into dist/, and Vitest.
import react from "@vitejs/plugin-react";
import { defineConfig, type ProxyOptions } from "vite";
import type { ViteUserConfig } from "vitest/config";

// Where `npm run dev` finds the bridge's WebSocket; `aistream up` listens here by default.
const bridge = process.env["AISTREAM_BRIDGE"] ?? "ws://127.0.0.1:8080";
// The page the bridge would have served itself: the proxied handshake claims to come from it.
const bridgeOrigin = new URL(bridge.replace(/^ws/, "http")).origin;

const proxy: Record<string, ProxyOptions> = {
  "/ws": {
    target: bridge,
    ws: true,
    changeOrigin: true,
    configure: (server) => {
      server.on("proxyReqWs", (request) => request.setHeader("Origin", bridgeOrigin));
    },
  },
};

const test: ViteUserConfig["test"] = {
  environment: "jsdom",
  setupFiles: ["src/test/setup.ts"],
  include: ["src/**/*.test.{ts,tsx}"],
  restoreMocks: true,
  unstubGlobals: true,
};

export default defineConfig({
  plugins: [react()],
  server: { proxy },
  preview: { proxy },
  build: { outDir: "dist", emptyOutDir: true },
  test,
});
