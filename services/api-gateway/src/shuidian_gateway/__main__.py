"""`python -m shuidian_gateway`: run the API gateway."""

from shuidian_gateway.adapters.live import Server
from shuidian_gateway.app import create_app
from shuidian_gateway.settings import GatewaySettings
from shuidian_kit.service import serve

# The live server ends open event streams at shutdown instead of waiting for them.
settings = GatewaySettings()
serve(create_app(settings), settings, "gateway", server_class=Server)
