/// <reference types="vitest/config" />
// One build, two pages: console.html (staff, desktop) and portal.html (tenants, phone). They share
// one assets/ folder, so Vue, the API client and the shared code are downloaded once and cached
// for good (file names carry a content hash). The gateway serves dist/ (shuidian_gateway.webui).
import { fileURLToPath, URL } from 'node:url'
import { existsSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { brotliCompressSync, constants, gzipSync } from 'node:zlib'
import { defineConfig, type Plugin } from 'vite'
import vue from '@vitejs/plugin-vue'

// A page is built once its entry exists (each app's helper adds its own).
const pages = ['console', 'portal'].filter((page) => existsSync(`${page}.html`) && existsSync(`src/${page}/main.ts`))
const gateway = process.env.GATEWAY_URL ?? 'http://127.0.0.1:8000'

/** In `npm run dev`, /console/… and /portal/… answer their page, as the gateway does. */
function historyFallback(): Plugin {
  return {
    name: 'shuidian-history-fallback',
    configureServer(server) {
      server.middlewares.use((req, _res, next) => {
        const page = pages.find((p) => req.url === `/${p}` || req.url?.startsWith(`/${p}/`))
        if (page && req.headers.accept?.includes('text/html')) req.url = `/${page}.html`
        next()
      })
    },
  }
}

/**
 * After the build, `<file>.br` and `<file>.gz` beside every asset worth compressing, at the best
 * levels (done once here rather than per request): the gateway sends the one a browser accepts
 * (shuidian_gateway.webui). A variant that would not be smaller is not written.
 */
function precompress(): Plugin {
  return {
    name: 'shuidian-precompress',
    apply: 'build',
    async writeBundle(options, bundle) {
      const outDir = options.dir ?? 'dist'
      const names = Object.keys(bundle).filter((name) => /\.(js|css|svg|json)$/.test(name))
      await Promise.all(
        names.map(async (name) => {
          const file = join(outDir, name)
          const data = await readFile(file)
          if (data.length < 1024) return
          const variants: [string, Buffer][] = [
            ['.gz', gzipSync(data, { level: 9 })],
            ['.br', brotliCompressSync(data, { params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: data.length } })],
          ]
          await Promise.all(variants.filter(([, packed]) => packed.length < data.length).map(([suffix, packed]) => writeFile(file + suffix, packed)))
        }),
      )
    },
  }
}

export default defineConfig({
  base: '/',
  plugins: [vue(), historyFallback(), precompress()],
  resolve: { alias: { '@': fileURLToPath(new URL('./src', import.meta.url)) } },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    chunkSizeWarningLimit: 1200,
    rollupOptions: { input: Object.fromEntries(pages.map((p) => [p, `${p}.html`])) },
  },
  server: { proxy: { '/v1': gateway } },
  test: {
    environment: 'jsdom',
    include: ['tests-unit/**/*.test.ts'],
  },
})
