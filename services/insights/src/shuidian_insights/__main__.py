"""`python -m shuidian_insights`: run the insights service."""

from shuidian_insights.app import create_app
from shuidian_insights.settings import InsightsSettings
from shuidian_kit.service import serve

settings = InsightsSettings()
serve(create_app(settings), settings, "insights")
