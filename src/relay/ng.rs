//! rtpengine's ng control protocol (bencode over UDP): the server side for
//! `serlua relay`, the client side for driving a remote relay.
//! STUB: being written.
