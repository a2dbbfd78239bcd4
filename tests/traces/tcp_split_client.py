#!/usr/bin/env python3
"""Sends one SIP REGISTER over TCP in two writes, 300 ms apart, with
TCP_NODELAY, so that a capture holds the message split across two TCP
segments (RFC 3261 section 18.3: the receiver frames it by Content-Length).
Reads the proxy's reply, then closes. Used by tests/traces/record.sh.

usage: tcp_split_client.py PROXY_IP PROXY_PORT LOCAL_PORT
"""
import socket
import sys
import time

proxy_ip, proxy_port, local_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", local_port))
s.connect((proxy_ip, proxy_port))

msg = (
    f"REGISTER sip:example.com SIP/2.0\r\n"
    f"Via: SIP/2.0/TCP 127.0.0.1:{local_port};branch=z9hG4bK-split-1;rport\r\n"
    f"Max-Forwards: 70\r\n"
    f"From: <sip:alice@example.com>;tag=split1\r\n"
    f"To: <sip:alice@example.com>\r\n"
    f"Call-ID: tcp-split-1@127.0.0.1\r\n"
    f"CSeq: 1 REGISTER\r\n"
    f"Contact: <sip:alice@127.0.0.1:{local_port};transport=tcp>\r\n"
    f"Expires: 3600\r\n"
    f"User-Agent: serlua tcp_split_client\r\n"
    f"Content-Length: 0\r\n"
    f"\r\n"
).encode()

# The cut falls inside the header section, so neither segment alone is a
# message.
cut = msg.index(b"Call-ID") + 4
s.sendall(msg[:cut])
time.sleep(0.3)
s.sendall(msg[cut:])

s.settimeout(5)
reply = b""
while b"\r\n\r\n" not in reply:
    chunk = s.recv(4096)
    if not chunk:
        break
    reply += chunk
print(reply.decode(errors="replace").split("\r\n")[0])
s.close()
