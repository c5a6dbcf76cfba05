//! The loaded data plane: the embedded object, its maps as typed handles,
//! one reading of them for `/metrics`, and `BPF_PROG_TEST_RUN` for tests and
//! benchmarks.
mod batch;
mod cgroup;
mod filter;
mod load;
mod maps;
mod path_v6;
mod sample;
mod slots;
mod tc;
mod testrun;
mod view;

pub use batch::lookup_all;
pub use cgroup::{attach_cgroup, cgroup2_root};
pub use filter::AddrFilter;
pub use load::{Capacities, Datapath, XdpMode, OBJECT, PROGRAM};
pub use maps::{pinned, svc_name_str, Maps, MapsReader};
pub use sample::{MapFill, MapSample, ServiceCounters};
pub use slots::{RingSlots, SlotsView};
pub use tc::{attach_tc, detach_filters, TcAttached, EXT_PROGRAM, EXT_TC_PROGRAM, POD_PROGRAM};
pub use testrun::{run_frame, run_frame_with_full_meta, FrameResult};
pub use view::{now_ns, MapsView, MapsViewV6};
