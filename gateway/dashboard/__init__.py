"""The clinic dashboard: a static page that talks to the broker itself.

``static/`` holds the page (no build step; MQTT.js vendored under
``static/vendor/``). The page connects to the broker over MQTT over
WebSockets, so nothing of ours sits between the gateways and the screen;
``server.py`` only hands the files out (``pumpgw dashboard``, ``pumpgw demo``)
or copies them, with the page's settings, for any web server or mosquitto's
own ``http_dir`` (``pumpgw dashboard --export DIR``).
"""
