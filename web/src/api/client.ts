// The typed client of the gateway's public API. `schema.d.ts` is generated from the gateway's
// OpenAPI by `make web-api` and never edited by hand: a route that changes breaks `vue-tsc`.
import createClient, { type Client } from 'openapi-fetch'
import type { components, paths } from './schema'

export type { components, paths }
export type Schemas = components['schemas']
export type Api = Client<paths>

/** An RFC 9457 problem document, as every gateway refusal is. */
export interface Problem {
  type?: string
  title?: string
  status: number
  detail?: string
  code?: string
}

/** A refusal or failure of the gateway, carrying its problem document. */
export class ApiError extends Error {
  readonly problem: Problem

  constructor(problem: Problem) {
    super(problem.detail || problem.title || `HTTP ${problem.status}`)
    this.name = 'ApiError'
    this.problem = problem
  }

  get status(): number {
    return this.problem.status
  }
}

/** A problem document from any answer body (a non-problem body still yields status and text). */
export function toProblem(status: number, body: unknown): Problem {
  if (body && typeof body === 'object' && 'status' in body) return body as Problem
  if (typeof body === 'string' && body) return { status, detail: body.slice(0, 300) }
  return { status, title: `HTTP ${status}` }
}

/** A client whose every call goes through `fetchImpl` (the auth store's, which adds the bearer). */
export function createApi(fetchImpl: typeof fetch, baseUrl = location.origin): Api {
  return createClient<paths>({ baseUrl, fetch: (request: Request) => fetchImpl(request) })
}

/** The data of an openapi-fetch answer, or an ApiError with its problem document. */
export function unwrap<T>(result: { data?: T; error?: unknown; response: Response }): T {
  if (result.error !== undefined || !result.response.ok) {
    throw new ApiError(toProblem(result.response.status, result.error))
  }
  return result.data as T
}

/** A fresh Idempotency-Key for one money or command write (8–100 characters). */
export function idempotencyKey(prefix = 'web'): string {
  // crypto.randomUUID exists only in secure contexts; a demo reached over plain http is not one.
  const bytes = crypto.getRandomValues(new Uint8Array(16))
  return `${prefix}-${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`
}
