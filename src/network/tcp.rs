//! TCP transport. (Skeleton: implementation in progress.)
