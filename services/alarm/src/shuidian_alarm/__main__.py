"""`python -m shuidian_alarm`: run the alarm service."""

from shuidian_alarm.app import create_app
from shuidian_alarm.settings import AlarmSettings
from shuidian_kit.service import serve

settings = AlarmSettings()
serve(create_app(settings), settings, "alarm")
