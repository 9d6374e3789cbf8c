// The portal's API client: every call carries the signed-in tenant's bearer token.
import { createApi, type Api } from '@/api/client'
import { useAuth } from './auth'

let api: Api | null = null

export function useApi(): Api {
  const auth = useAuth()
  api ??= createApi((request) => auth.authorizedFetch(request))
  return api
}
