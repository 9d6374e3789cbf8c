// Sign-in for both apps: the gateway's OAuth2 password grant, refresh tokens that are good once
// (each refresh returns the next), and a fetch that carries the bearer and refreshes when needed.
import { defineStore } from 'pinia'
import { computed, ref } from 'vue'
import { ApiError, toProblem, type Schemas } from '@/api/client'

export type TokenOut = Schemas['TokenOut']
export type WhoAmI = Schemas['WhoAmI']

/** Refresh this long before the access token expires, so a request never carries a dying one. */
const EARLY_MS = 30_000

interface Stored {
  refresh_token: string
}

async function tokenRequest(fields: Record<string, string>): Promise<TokenOut> {
  const response = await fetch('/v1/auth/token', {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(fields),
  })
  const body: unknown = await response.json().catch(() => undefined)
  if (!response.ok) throw new ApiError(toProblem(response.status, body))
  return body as TokenOut
}

/**
 * One auth store per app (`console`, `portal`): each keeps its refresh token under its own key, so
 * a tenant and a staff member signed in in one browser never share a session. The refresh token is
 * kept in sessionStorage (gone with the tab); the access token only in memory.
 */
export function defineAuthStore(app: string) {
  const storageKey = `shuidian.${app}.session`
  return defineStore(`auth-${app}`, () => {
    const accessToken = ref<string | null>(null)
    const expiresAt = ref(0)
    const me = ref<WhoAmI | null>(null)
    let refreshing: Promise<boolean> | null = null

    const signedIn = computed(() => me.value !== null)

    function stored(): Stored | null {
      const raw = sessionStorage.getItem(storageKey)
      return raw ? (JSON.parse(raw) as Stored) : null
    }

    function keep(tokens: TokenOut): void {
      accessToken.value = tokens.access_token
      expiresAt.value = Date.now() + tokens.expires_in * 1000
      sessionStorage.setItem(storageKey, JSON.stringify({ refresh_token: tokens.refresh_token }))
    }

    function forget(): void {
      accessToken.value = null
      expiresAt.value = 0
      me.value = null
      sessionStorage.removeItem(storageKey)
    }

    async function loadMe(): Promise<WhoAmI> {
      const response = await authorizedFetch('/v1/auth/me')
      const body: unknown = await response.json().catch(() => undefined)
      if (!response.ok) throw new ApiError(toProblem(response.status, body))
      me.value = body as WhoAmI
      return me.value
    }

    async function signIn(username: string, password: string): Promise<WhoAmI> {
      keep(await tokenRequest({ grant_type: 'password', username, password }))
      return loadMe()
    }

    /** Trade the stored refresh token for the next pair; false (and signed out) when it is spent. */
    function refresh(): Promise<boolean> {
      refreshing ??= (async () => {
        const session = stored()
        if (!session) return false
        try {
          keep(await tokenRequest({ grant_type: 'refresh_token', refresh_token: session.refresh_token }))
          return true
        } catch (err) {
          if (err instanceof ApiError && err.status < 500) forget()
          return false
        }
      })().finally(() => {
        refreshing = null
      })
      return refreshing
    }

    /** After a reload: a stored refresh token signs the user back in. */
    async function resume(): Promise<boolean> {
      if (me.value) return true
      if (!stored() || !(await refresh())) return false
      await loadMe()
      return true
    }

    async function signOut(): Promise<void> {
      const session = stored()
      forget()
      if (session) {
        await fetch('/v1/auth/revoke', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ refresh_token: session.refresh_token }),
        }).catch(() => undefined)
      }
    }

    /** fetch with the bearer token; refreshes first when the token is about to expire, and once after a 401. */
    async function authorizedFetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response> {
      const url = typeof input === 'string' ? new URL(input, location.href) : input
      const request = new Request(url, init)
      if (accessToken.value && Date.now() > expiresAt.value - EARLY_MS) await refresh()
      const send = (): Promise<Response> => {
        const attempt = request.clone()
        if (accessToken.value) attempt.headers.set('Authorization', `Bearer ${accessToken.value}`)
        return fetch(attempt)
      }
      const response = await send()
      if (response.status === 401 && stored() && (await refresh())) return send()
      if (response.status === 401) forget()
      return response
    }

    function can(action: string): boolean {
      return me.value?.actions.includes(action) ?? false
    }

    return { accessToken, me, signedIn, signIn, signOut, refresh, resume, authorizedFetch, can, loadMe }
  })
}
