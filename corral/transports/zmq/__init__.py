"""ZeroMQ transport: the wire format, sockets, the kernel server and its clients."""

from corral.transports.zmq.zerocopy import keep_collector_until_exit

# Every corral module that sends through zmq imports this package first: from here on
# a process cannot crash at exit over buffers lent to libzmq (see zerocopy.py).
keep_collector_until_exit()
