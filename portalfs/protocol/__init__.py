"""The sans-I/O protocol core: the edge protocol's frames and messages (``edge``), and what a transport
asks of the server side of one connection (``session``). No sockets, no clock, no trio."""
