//! In-process transport for tests. (Skeleton: implementation in progress.)
