//! In-memory storage backends. (Skeleton: implementation in progress.)
