import { defineAuthStore } from '@/shared/auth'

export const useAuth = defineAuthStore('portal')
