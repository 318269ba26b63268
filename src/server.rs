//! The server: wires the Raft node, storage, transport and KV state machine
//! together and runs the event loop. (Skeleton: implementation in progress.)
