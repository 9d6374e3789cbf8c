// The estate the console is looking at: the staff member's estates as the gateway lists them.
import { defineStore } from 'pinia'
import { ref } from 'vue'
import { unwrap } from '@/api/client'
import { useApi } from './api'

export interface Estate {
  estate_id: string
  name: string
  rooms?: number
  occupied_rooms?: number
  buildings?: number
}

const KEY = 'shuidian.console.estate'

export const useEstate = defineStore('estate', () => {
  const estates = ref<Estate[]>([])
  const current = ref<string>(localStorage.getItem(KEY) ?? '')

  async function load(): Promise<void> {
    const page = unwrap(await useApi().GET('/v1/estates', { params: { query: { limit: 200 } } }))
    estates.value = page.items as unknown as Estate[]
    if (!estates.value.some((e) => e.estate_id === current.value)) select(estates.value[0]?.estate_id ?? '')
  }

  function select(estateId: string): void {
    current.value = estateId
    localStorage.setItem(KEY, estateId)
  }

  return { estates, current, load, select }
})
