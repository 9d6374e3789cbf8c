import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { createPinia, setActivePinia } from 'pinia'
import { defineAuthStore } from '@/shared/auth'

const me = { kind: 'user', subject: 'u1', role: 'cashier', estates: ['demo'], tenant_id: null, actions: ['topups:create'] }

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } })
}

function tokens(n: number, expiresIn = 900) {
  return { access_token: `access-${n}`, token_type: 'bearer', expires_in: expiresIn, refresh_token: `refresh-${n}` }
}

describe('auth store', () => {
  let calls: { url: string; auth: string | null; body: string }[]
  let answers: Response[]

  beforeEach(() => {
    setActivePinia(createPinia())
    sessionStorage.clear()
    calls = []
    answers = []
    vi.stubGlobal('fetch', async (input: RequestInfo | URL, init?: RequestInit) => {
      const request = input instanceof Request ? input : new Request(new URL(String(input), location.href), init)
      calls.push({ url: new URL(request.url).pathname, auth: request.headers.get('authorization'), body: await request.text() })
      const answer = answers.shift()
      if (!answer) throw new Error(`unexpected call ${request.url}`)
      return answer
    })
  })
  afterEach(() => {
    vi.unstubAllGlobals()
    vi.useRealTimers()
  })

  it('signs in with the password grant and learns the role and actions', async () => {
    const auth = defineAuthStore('t1')()
    answers.push(json(tokens(1)), json(me))
    await auth.signIn('cashier', 'pw')
    expect(calls[0]).toMatchObject({ url: '/v1/auth/token', body: 'grant_type=password&username=cashier&password=pw' })
    expect(calls[1]).toMatchObject({ url: '/v1/auth/me', auth: 'Bearer access-1' })
    expect(auth.can('topups:create')).toBe(true)
    expect(auth.can('commands:trip')).toBe(false)
  })

  it('refreshes once after a 401 and retries with the new token; the spent refresh token is never reused', async () => {
    const auth = defineAuthStore('t2')()
    answers.push(json(tokens(1)), json(me))
    await auth.signIn('cashier', 'pw')
    answers.push(json({ status: 401, code: 'unauthorised' }, 401), json(tokens(2)), json({ items: [] }))
    const response = await auth.authorizedFetch('/v1/rooms')
    expect(response.status).toBe(200)
    expect(calls.slice(2).map((c) => [c.url, c.auth])).toEqual([
      ['/v1/rooms', 'Bearer access-1'],
      ['/v1/auth/token', null],
      ['/v1/rooms', 'Bearer access-2'],
    ])
    expect(calls[3]!.body).toBe('grant_type=refresh_token&refresh_token=refresh-1')
    expect(JSON.parse(sessionStorage.getItem('shuidian.t2.session')!)).toEqual({ refresh_token: 'refresh-2' })
  })

  it('refreshes before a request when the access token is about to expire, once for concurrent requests', async () => {
    vi.useFakeTimers({ toFake: ['Date'] })
    const auth = defineAuthStore('t3')()
    answers.push(json(tokens(1)), json(me))
    await auth.signIn('cashier', 'pw')
    vi.setSystemTime(Date.now() + 880_000) // 20 s left: inside the early-refresh margin
    answers.push(json(tokens(2)), json({ a: 1 }), json({ b: 2 }))
    await Promise.all([auth.authorizedFetch('/v1/a'), auth.authorizedFetch('/v1/b')])
    const refreshes = calls.filter((c) => c.url === '/v1/auth/token' && c.body.startsWith('grant_type=refresh_token'))
    expect(refreshes).toHaveLength(1)
    expect(calls.slice(-2).every((c) => c.auth === 'Bearer access-2')).toBe(true)
  })

  it('a refused refresh signs out', async () => {
    const auth = defineAuthStore('t4')()
    answers.push(json(tokens(1)), json(me))
    await auth.signIn('cashier', 'pw')
    answers.push(json({ status: 401 }, 401), json({ status: 400, code: 'invalid_grant' }, 400))
    const response = await auth.authorizedFetch('/v1/rooms')
    expect(response.status).toBe(401)
    expect(auth.signedIn).toBe(false)
    expect(sessionStorage.getItem('shuidian.t4.session')).toBeNull()
  })

  it('resumes a session after a reload from the stored refresh token', async () => {
    sessionStorage.setItem('shuidian.t5.session', JSON.stringify({ refresh_token: 'refresh-9' }))
    const auth = defineAuthStore('t5')()
    answers.push(json(tokens(10)), json(me))
    expect(await auth.resume()).toBe(true)
    expect(auth.me?.role).toBe('cashier')
  })

  it('signing out revokes the refresh token family', async () => {
    const auth = defineAuthStore('t6')()
    answers.push(json(tokens(1)), json(me))
    await auth.signIn('cashier', 'pw')
    answers.push(new Response(null, { status: 204 }))
    await auth.signOut()
    expect(calls.at(-1)).toMatchObject({ url: '/v1/auth/revoke', body: '{"refresh_token":"refresh-1"}' })
    expect(auth.signedIn).toBe(false)
  })
})
