"""Payment provider emulators for the tests and the demo: WeChat Pay API v3 and Alipay's open API,
each on a real port with throwaway keys of its own. They verify the requests billing signs, sign
their answers and notifications, and keep the orders' state, so billing talks to them exactly as it
talks to the real providers (only the base URL differs). Written from the providers' documentation
with `cryptography` directly, independently of billing's signing code."""
