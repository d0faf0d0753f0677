"""MQTT: the connection (`link`), the topic contract (`topics`) and the device hub (`devices`).

The loudspeaker and LED adapters, the CAP feeds and the simulator all go through these; nothing
else in warnd names a topic or opens a broker connection.
"""
