// vue-i18n for both apps: zh-CN first (the default and the fallback), English complete.
import { createI18n } from 'vue-i18n'
import { ApiError } from '@/api/client'
import sharedZh from './locales/zh-CN'
import sharedEn from './locales/en'

export const LOCALES = ['zh-CN', 'en'] as const
export type Locale = (typeof LOCALES)[number]
type Messages = Record<string, unknown>

const LOCALE_KEY = 'shuidian.locale'

export function savedLocale(): Locale {
  const saved = localStorage.getItem(LOCALE_KEY)
  return (LOCALES as readonly string[]).includes(saved ?? '') ? (saved as Locale) : 'zh-CN'
}

/** The i18n of one app: the shared texts plus the app's own (`{ console: … }` or `{ portal: … }`). */
export function createAppI18n(app: { 'zh-CN': Messages; en: Messages }) {
  const i18n = createI18n({
    legacy: false,
    locale: savedLocale(),
    fallbackLocale: 'zh-CN',
    messages: { 'zh-CN': { ...sharedZh, ...app['zh-CN'] }, en: { ...sharedEn, ...app.en } },
  })
  document.documentElement.lang = i18n.global.locale.value
  return i18n
}

export function setLocale(i18n: ReturnType<typeof createAppI18n>, locale: Locale): void {
  i18n.global.locale.value = locale
  localStorage.setItem(LOCALE_KEY, locale)
  document.documentElement.lang = locale
}

/** Every dotted key of a message tree (used by the tests: zh-CN and en must have the same). */
export function messageKeys(tree: Messages, prefix = ''): string[] {
  return Object.entries(tree).flatMap(([key, value]) =>
    value && typeof value === 'object' ? messageKeys(value as Messages, `${prefix}${key}.`) : [`${prefix}${key}`],
  )
}

/** The message key that explains an error to a person (the problem's own detail is shown beside it). */
export function errorKey(err: unknown): string {
  if (!(err instanceof ApiError)) return 'error.network'
  const byCode: Record<string, string> = {
    invalid_grant: 'auth.failed',
    too_many_requests: 'auth.tooMany',
    forbidden: 'error.forbidden',
    not_found: 'error.notFound',
    validation_error: 'error.validation',
    not_implemented: 'error.notImplemented',
    upstream_unavailable: 'error.upstream',
    idempotency_conflict: 'error.conflict',
    precondition_failed: 'error.precondition',
    unauthorised: 'auth.expired',
  }
  return byCode[err.problem.code ?? ''] ?? (err.status === 429 ? 'auth.tooMany' : 'error.generic')
}
