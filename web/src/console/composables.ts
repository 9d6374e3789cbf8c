// Small pieces every console page uses: running a write with a clear message, paged lists, polling.
import { onBeforeUnmount, onMounted, ref, type Ref } from 'vue'
import { ElMessage } from 'element-plus'
import { ApiError } from '@/api/client'
import { errorKey } from '@/shared/i18n'
import { i18n } from './i18n'
import type { Page } from './types'

/** A person-readable explanation of an error: our words first, the gateway's detail beside them. */
export function explain(err: unknown): string {
  const ours = i18n.global.t(errorKey(err))
  const detail = err instanceof ApiError ? err.problem.detail : undefined
  return detail && detail !== ours ? `${ours}: ${detail}` : ours
}

/** Run a write; say so when it worked (`done`: a message key), say why when it did not. */
export async function run<T>(write: () => Promise<T>, done = 'common.done'): Promise<T | undefined> {
  try {
    const result = await write()
    ElMessage.success(i18n.global.t(done))
    return result
  } catch (err) {
    ElMessage.error({ message: explain(err), duration: 6000 })
    return undefined
  }
}

/** A list the gateway pages with `next_cursor`: the first page on reload(), the next on more(). */
export function usePaged<T>(load: (cursor: string | undefined) => Promise<Page<T>>) {
  const items = ref([]) as Ref<T[]>
  const next = ref<string | null>(null)
  const loading = ref(false)
  const error = ref('')

  async function fetchPage(cursor: string | undefined, append: boolean): Promise<void> {
    loading.value = true
    try {
      const page = await load(cursor)
      items.value = append ? [...items.value, ...page.items] : page.items
      next.value = page.next_cursor
      error.value = ''
    } catch (err) {
      error.value = explain(err)
    } finally {
      loading.value = false
    }
  }

  return {
    items,
    next,
    loading,
    error,
    reload: () => fetchPage(undefined, false),
    more: () => (next.value ? fetchPage(next.value, true) : Promise.resolve()),
  }
}

/** Call `tick` now and every `ms` while the page is shown (not while the tab is hidden). */
export function usePolling(tick: () => Promise<unknown>, ms: number): void {
  let timer: ReturnType<typeof setInterval> | undefined
  onMounted(() => {
    void tick()
    timer = setInterval(() => {
      if (document.visibilityState !== 'hidden') void tick()
    }, ms)
  })
  onBeforeUnmount(() => clearInterval(timer))
}
