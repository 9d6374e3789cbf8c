import { describe, expect, it } from 'vitest'
import { ApiError } from '@/api/client'
import { errorKey, messageKeys } from '@/shared/i18n'
import sharedZh from '@/shared/locales/zh-CN'
import sharedEn from '@/shared/locales/en'
import consoleZh from '@/console/locales/zh-CN'
import consoleEn from '@/console/locales/en'

describe('messages', () => {
  it('English has exactly the keys zh-CN has (shared)', () => {
    expect(messageKeys(sharedEn)).toEqual(messageKeys(sharedZh))
  })
  it('English has exactly the keys zh-CN has (console)', () => {
    expect(messageKeys(consoleEn)).toEqual(messageKeys(consoleZh))
  })
  it('no text is empty', () => {
    const empty = (tree: Record<string, unknown>, prefix: string) =>
      messageKeys(tree).filter((key) => {
        const value = key.split('.').reduce<unknown>((node, part) => (node as Record<string, unknown>)[part], tree)
        return typeof value !== 'string' || value.trim() === ''
      }).map((key) => prefix + key)
    expect([...empty(sharedZh, ''), ...empty(sharedEn, ''), ...empty(consoleZh, 'c.'), ...empty(consoleEn, 'c.')]).toEqual([])
  })
})

describe('errorKey', () => {
  it.each([
    ['invalid_grant', 400, 'auth.failed'],
    ['too_many_requests', 429, 'auth.tooMany'],
    ['not_found', 404, 'error.notFound'],
    ['validation_error', 422, 'error.validation'],
    ['precondition_failed', 412, 'error.precondition'],
    [undefined, 429, 'auth.tooMany'],
    [undefined, 500, 'error.generic'],
  ])('a %s problem (%i) reads %s', (code, status, key) => {
    expect(errorKey(new ApiError({ status, code }))).toBe(key)
  })
  it('anything that is not a problem is the network', () => {
    expect(errorKey(new TypeError('Failed to fetch'))).toBe('error.network')
  })
})
