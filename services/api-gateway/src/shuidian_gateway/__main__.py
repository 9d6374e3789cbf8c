"""`python -m shuidian_gateway`: run the API gateway."""

from shuidian_gateway.app import create_app
from shuidian_gateway.settings import GatewaySettings
from shuidian_kit.service import serve

settings = GatewaySettings()
serve(create_app(settings), settings, "gateway")
