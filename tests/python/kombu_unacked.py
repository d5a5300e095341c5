"""kombu's own unacked bookkeeping, for the interop tests.

  hold URL     take one message from `celery` without acking it (a Python
               consumer that dies holding it) and print its delivery tag
  restore URL  run kombu's restore of messages older than the visibility
               timeout (1 s here) and print the length of `celery`
"""
import sys
import time

from kombu import Connection

mode, url = sys.argv[1], sys.argv[2]
with Connection(url, transport_options={"visibility_timeout": 1}) as conn:
    channel = conn.channel()
    if mode == "hold":
        for _ in range(100):
            message = channel.basic_get("celery", no_ack=False)
            if message is not None:
                print(message.delivery_tag)
                break
            time.sleep(0.05)
        else:
            sys.exit("no message to hold")
        # Exit without ack: the message stays in kombu's unacked hash.
    elif mode == "restore":
        channel.qos.restore_visible(num=1000)
        print(conn.default_channel.client.llen("celery"))
