//! File storage backends. (Skeleton: implementation in progress.)
