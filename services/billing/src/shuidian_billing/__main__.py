"""`python -m shuidian_billing`: run the billing service."""

from shuidian_billing.app import create_app
from shuidian_billing.settings import BillingSettings
from shuidian_kit.service import serve

settings = BillingSettings()
serve(create_app(settings), settings, "billing")
