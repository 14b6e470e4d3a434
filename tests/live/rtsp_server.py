"""A loopback RTSP server for the live-source tests: a moving test pattern as MJPEG over RTP.

Run with the system Python (python3-gi, gir1.2-gst-rtsp-server-1.0): ``python3 rtsp_server.py PORT``.
Serves rtsp://127.0.0.1:PORT/test until killed; binds 127.0.0.1 only.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch("( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width=64,height=48,framerate=15/1 "
                   "! jpegenc ! rtpjpegpay name=pay0 pt=96 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/test", factory)
server.attach(None)
print("ready", flush=True)
GLib.MainLoop().run()
