"""`python -m shuidian_collector`: run the collector service."""

from shuidian_collector.app import create_app
from shuidian_collector.settings import CollectorSettings
from shuidian_kit.service import serve

settings = CollectorSettings()
serve(create_app(settings), settings, "collector")
