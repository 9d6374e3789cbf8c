"""`python -m shuidian_control`: run the control service."""

from shuidian_control.app import create_app
from shuidian_control.settings import ControlSettings
from shuidian_kit.service import serve

settings = ControlSettings()
serve(create_app(settings), settings, "control")
