//! Processes working together: the world of ranks a run is part of.
//!
//! A plain run is a world of one. Built with the `mpi` feature and started by `mpirun` or
//! `srun`, `distillery run` joins MPI's world ([`mpi_world`]): every rank runs the same
//! pipeline in lockstep, and the places where work is divided ask [`world`]:
//!
//! - the training loop splits each global batch across the ranks and sums their gradients with
//!   [`Comm::sum_in_rank_order`] (data-parallel training of one model);
//! - a sub-model group gives sub-model k to rank k mod N and moves what the sub-models know
//!   (weights, or softened outputs per batch) through the collectives below;
//! - files: rank 0 writes every shared output (model files, records, the report, the round
//!   state) and the other ranks read them after a barrier ([`shared_write`]); work a rank does
//!   alone ([`local`], such as a sub-model's phase 1 on its owner) writes its own checkpoints.
//!
//! MPI's world is process-wide by nature, so this is too: the binary sets it once, before any
//! work ([`set_world`]). Inside [`local`] the world is a world of one again.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The collectives distillery uses. Every call is collective: every rank makes it, in the same
/// order. A failure inside MPI aborts the job (MPI's default error handler).
pub trait Comm: Send + Sync {
    /// This process's rank, 0-based.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Waits for every rank.
    fn barrier(&self);
    /// Every rank's bytes, in rank order (lengths may differ between ranks).
    fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>>;
    /// Every rank's values, in rank order (lengths may differ between ranks).
    fn all_gather_f32(&self, local: &[f32]) -> Vec<Vec<f32>>;
    /// `parts[r]` goes to rank r; returns what every rank sent to this one, in rank order.
    fn all_to_all_f32(&self, parts: &[Vec<f32>]) -> Vec<Vec<f32>>;
    /// Rank `root`'s bytes on every rank.
    fn broadcast_bytes(&self, root: usize, bytes: Vec<u8>) -> Vec<u8>;
    /// Ends every rank of the job now, with exit code `code`.
    fn abort(&self, code: i32) -> !;

    /// Element-wise sum of every rank's `buf`, the same on every rank and the same from run to
    /// run: each element is added in rank order (rank 0's value, plus rank 1's, …) by exactly
    /// one rank. A reduce-scatter then an all-gather, so each rank sends and receives
    /// 2·(N − 1)/N of the buffer, as a ring all-reduce does; MPI's own `MPI_Allreduce` leaves
    /// the order of the additions to the library.
    fn sum_in_rank_order(&self, buf: &mut [f32]) {
        let n = self.size();
        if n == 1 {
            return;
        }
        let len = buf.len();
        let chunk = |r: usize| len * r / n..len * (r + 1) / n;
        let parts: Vec<Vec<f32>> = (0..n).map(|r| buf[chunk(r)].to_vec()).collect();
        let got = self.all_to_all_f32(&parts);
        let mut mine = got[0].clone();
        for piece in &got[1..] {
            for (a, b) in mine.iter_mut().zip(piece) {
                *a += b;
            }
        }
        for (r, part) in self.all_gather_f32(&mine).into_iter().enumerate() {
            buf[chunk(r)].copy_from_slice(&part);
        }
    }
}

/// A world of one process.
pub struct Single;

impl Comm for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn barrier(&self) {}
    fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>> {
        vec![local.to_vec()]
    }
    fn all_gather_f32(&self, local: &[f32]) -> Vec<Vec<f32>> {
        vec![local.to_vec()]
    }
    fn all_to_all_f32(&self, parts: &[Vec<f32>]) -> Vec<Vec<f32>> {
        parts.to_vec()
    }
    fn broadcast_bytes(&self, _root: usize, bytes: Vec<u8>) -> Vec<u8> {
        bytes
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

static SINGLE: Single = Single;
static WORLD: OnceLock<Box<dyn Comm>> = OnceLock::new();
static SENT: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static LOCAL: Cell<usize> = const { Cell::new(0) };
}

/// Makes `comm` the process's world. Once, before any work; later calls are ignored.
pub fn set_world(comm: Box<dyn Comm>) {
    let _ = WORLD.set(comm);
}

/// The world this code runs in: MPI's world when the binary joined one, else (and inside
/// [`local`]) a world of one.
pub fn world() -> &'static dyn Comm {
    if LOCAL.with(|l| l.get()) > 0 {
        return &SINGLE;
    }
    match WORLD.get() {
        Some(w) => w.as_ref(),
        None => &SINGLE,
    }
}

/// The whole job's world, even inside [`local`] (for messages and fault handling).
pub fn job() -> &'static dyn Comm {
    match WORLD.get() {
        Some(w) => w.as_ref(),
        None => &SINGLE,
    }
}

/// Runs `f` as this rank's own work: inside it the world is a world of one (no collectives,
/// no data-parallel training) and this rank writes its own files.
pub fn local<T>(f: impl FnOnce() -> T) -> T {
    LOCAL.with(|l| l.set(l.get() + 1));
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            LOCAL.with(|l| l.set(l.get() - 1));
        }
    }
    let _leave = Leave;
    f()
}

/// Writes a shared output: every rank reaches this point, rank 0 runs `write`, then every rank
/// waits for it. The first barrier means no rank is still looking at the folder as it was
/// before the write (a check whether a model file exists, say) when rank 0 changes it; the
/// second, that every rank sees the file afterwards. So every rank sees the same folder and
/// takes the same path through the pipeline. Every rank makes the same calls in the same order.
pub fn shared_write<T: Default>(
    write: impl FnOnce() -> crate::error::Result<T>,
) -> crate::error::Result<T> {
    let w = world();
    if w.size() == 1 {
        return write();
    }
    w.barrier();
    let out = if w.rank() == 0 {
        write()?
    } else {
        T::default()
    };
    w.barrier();
    Ok(out)
}

/// Checks that every rank runs the same experiment: the same resolved config, the same binary
/// and the same output folder (a digest of each, all-gathered). Every rank reaches the same
/// verdict, so a mismatch ends every rank with the same error and exit code 2.
pub fn check_same_run(config: &str, out: &std::path::Path) -> crate::error::Result<()> {
    use sha2::{Digest, Sha256};
    let w = world();
    if w.size() == 1 {
        return Ok(());
    }
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| std::fs::read(p).ok())
        .unwrap_or_default();
    let digest = |b: &[u8]| Sha256::digest(b).to_vec();
    let mine = [
        digest(config.as_bytes()),
        digest(&exe),
        digest(out.to_string_lossy().as_bytes()),
    ]
    .concat();
    let all = w.all_gather_bytes(&mine);
    let what = [
        "experiment file (resolved config)",
        "binary",
        "--out folder",
    ];
    let mut problems = Vec::new();
    for (r, d) in all.iter().enumerate().skip(1) {
        for (i, name) in what.iter().enumerate() {
            if d.get(32 * i..32 * (i + 1)) != all[0].get(32 * i..32 * (i + 1)) {
                problems.push(format!("rank {r} has another {name} than rank 0"));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    AGREED.store(true, Ordering::Relaxed);
    Err(crate::error::Error::Input(format!(
        "the ranks of this MPI job were started differently: {}; start every rank with the same binary, config and --out",
        problems.join("; ")
    )))
}

static AGREED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True when the error being reported was reached by every rank alike (so the job can end
/// cleanly, without aborting the others).
pub fn failure_is_agreed() -> bool {
    AGREED.load(Ordering::Relaxed)
}

/// True on the rank that writes shared outputs and measures latency (rank 0; every rank inside
/// [`local`]).
pub fn writes_shared() -> bool {
    world().rank() == 0
}

/// Counts `n` bytes this rank sent.
pub fn count_sent(n: usize) {
    SENT.fetch_add(n as u64, Ordering::Relaxed);
}

/// Bytes this rank has sent so far through the collectives.
pub fn bytes_sent() -> u64 {
    SENT.load(Ordering::Relaxed)
}

/// The rank and world size a launcher (Open MPI's `mpirun`, MPICH's Hydra, Slurm's `srun`) gave
/// this process, read from its environment; `None` when it was not started as one of several.
pub fn launched_as() -> Option<(usize, usize)> {
    let get = |k: &str| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    [
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
        ("PMI_RANK", "PMI_SIZE"),
        ("PMIX_RANK", "PMIX_SIZE"),
        ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS"),
    ]
    .iter()
    .find_map(|(r, n)| match (get(r), get(n)) {
        (Some(r), Some(n)) if n > 1 => Some((r, n)),
        _ => None,
    })
}

/// Refuses to run an experiment as one of several processes that did not join one world: a
/// binary built without the `mpi` feature under `mpirun`, or an MPI that does not talk to the
/// launcher (`srun` without PMI support). Each process would run the whole experiment alone,
/// all of them writing the same folder.
pub fn check_launch() -> crate::error::Result<()> {
    let Some((r, n)) = launched_as() else {
        return Ok(());
    };
    let size = job().size();
    if size == n {
        return Ok(());
    }
    Err(crate::error::Error::Input(if cfg!(feature = "mpi") {
        format!(
            "this process was started as rank {r} of {n}, but MPI sees a world of {size}: launch it with the mpirun (or an srun with PMI support) of the MPI distillery was built against"
        )
    } else {
        format!(
            "this process was started as rank {r} of {n} (mpirun or srun), but this distillery was built without MPI: build it with `cargo build --release --features mpi`"
        )
    }))
}

/// The owner of item `i` of `k` (a sub-model) among `n` ranks: `i mod n`.
pub fn owner(i: usize, n: usize) -> usize {
    i % n.max(1)
}

/// Packs f32 tensors as one byte buffer (little-endian), for [`Comm::broadcast_bytes`].
pub fn pack_f32(parts: &[Vec<f32>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(parts.len() as u64).to_le_bytes());
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        for v in p {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// The inverse of [`pack_f32`].
pub fn unpack_f32(bytes: &[u8]) -> crate::error::Result<Vec<Vec<f32>>> {
    let bad = || crate::error::Error::Other("malformed tensor message between ranks".into());
    let mut at = 0usize;
    let u64_at = |at: &mut usize| -> crate::error::Result<usize> {
        let b = bytes.get(*at..*at + 8).ok_or_else(bad)?;
        *at += 8;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| bad())?) as usize)
    };
    let n = u64_at(&mut at)?;
    let mut out = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let len = u64_at(&mut at)?;
        let b = bytes.get(at..at + 4 * len).ok_or_else(bad)?;
        at += 4 * len;
        out.push(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
    }
    Ok(out)
}

/// A fault for the fault tests, set by `DISTILLERY_FAULT=<error|panic|kill>@<rank>:<point>`:
/// at the named point, on that rank only, fail as asked (`kill`: SIGKILL to itself). Unset (always, outside those tests), nothing
/// happens.
pub fn fault_point(point: &str) -> crate::error::Result<()> {
    let Ok(spec) = std::env::var("DISTILLERY_FAULT") else {
        return Ok(());
    };
    let Some((kind, rest)) = spec.split_once('@') else {
        return Ok(());
    };
    let Some((rank, at)) = rest.split_once(':') else {
        return Ok(());
    };
    if at != point || rank.parse::<usize>().ok() != Some(job().rank()) {
        return Ok(());
    }
    match kind {
        "panic" => panic!("injected fault at {point} (DISTILLERY_FAULT)"),
        "kill" => {
            // As `kill -9` from outside would: no unwinding, no cleanup, no message.
            let _ = std::process::Command::new("kill")
                .args(["-9", &std::process::id().to_string()])
                .status();
            std::thread::sleep(std::time::Duration::from_secs(60));
            Ok(())
        }
        _ => Err(crate::error::Error::Input(format!(
            "injected fault at {point} (DISTILLERY_FAULT)"
        ))),
    }
}

#[cfg(feature = "mpi")]
mod mpi_comm {
    use super::{count_sent, Comm};
    use mpi::datatype::{Partition, PartitionMut};
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;
    use mpi::Count;

    /// MPI's world communicator.
    pub struct MpiComm {
        rank: usize,
        size: usize,
    }

    impl MpiComm {
        pub fn new() -> MpiComm {
            let w = SimpleCommunicator::world();
            MpiComm {
                rank: w.rank() as usize,
                size: w.size() as usize,
            }
        }
    }

    fn displs(counts: &[Count]) -> Vec<Count> {
        counts
            .iter()
            .scan(0, |acc, &c| {
                let d = *acc;
                *acc += c;
                Some(d)
            })
            .collect()
    }

    fn gather_counts(w: &SimpleCommunicator, n: usize, len: usize) -> Vec<Count> {
        let mut counts = vec![0 as Count; n];
        w.all_gather_into(&(len as Count), &mut counts[..]);
        counts
    }

    fn split<T: Clone>(buf: &[T], counts: &[Count]) -> Vec<Vec<T>> {
        let mut at = 0usize;
        counts
            .iter()
            .map(|&c| {
                let v = buf[at..at + c as usize].to_vec();
                at += c as usize;
                v
            })
            .collect()
    }

    impl Comm for MpiComm {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn barrier(&self) {
            SimpleCommunicator::world().barrier();
        }
        fn all_gather_bytes(&self, local: &[u8]) -> Vec<Vec<u8>> {
            let w = SimpleCommunicator::world();
            let counts = gather_counts(&w, self.size, local.len());
            let d = displs(&counts);
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            let mut buf = vec![0u8; total];
            {
                let mut part = PartitionMut::new(&mut buf[..], &counts[..], &d[..]);
                w.all_gather_varcount_into(local, &mut part);
            }
            count_sent(local.len() * (self.size - 1));
            split(&buf, &counts)
        }
        fn all_gather_f32(&self, local: &[f32]) -> Vec<Vec<f32>> {
            let w = SimpleCommunicator::world();
            let counts = gather_counts(&w, self.size, local.len());
            let d = displs(&counts);
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            let mut buf = vec![0f32; total];
            {
                let mut part = PartitionMut::new(&mut buf[..], &counts[..], &d[..]);
                w.all_gather_varcount_into(local, &mut part);
            }
            count_sent(4 * local.len() * (self.size - 1));
            split(&buf, &counts)
        }
        fn all_to_all_f32(&self, parts: &[Vec<f32>]) -> Vec<Vec<f32>> {
            let w = SimpleCommunicator::world();
            let send_counts: Vec<Count> = parts.iter().map(|p| p.len() as Count).collect();
            let mut recv_counts = vec![0 as Count; self.size];
            w.all_to_all_into(&send_counts[..], &mut recv_counts[..]);
            let send: Vec<f32> = parts.concat();
            let sd = displs(&send_counts);
            let rd = displs(&recv_counts);
            let total: usize = recv_counts.iter().map(|&c| c as usize).sum();
            let mut buf = vec![0f32; total];
            {
                let s = Partition::new(&send[..], &send_counts[..], &sd[..]);
                let mut r = PartitionMut::new(&mut buf[..], &recv_counts[..], &rd[..]);
                w.all_to_all_varcount_into(&s, &mut r);
            }
            let away: usize = parts
                .iter()
                .enumerate()
                .filter(|(r, _)| *r != self.rank)
                .map(|(_, p)| p.len())
                .sum();
            count_sent(4 * away);
            split(&buf, &recv_counts)
        }
        fn sum_in_rank_order(&self, buf: &mut [f32]) {
            // As the trait's default, without its copies: rank r receives every rank's chunk r
            // straight from `buf` (all-to-all), adds them in rank order, and the sums are
            // gathered back into `buf` in place.
            let n = self.size;
            if n == 1 {
                return;
            }
            let w = SimpleCommunicator::world();
            let len = buf.len();
            let start = |r: usize| len * r / n;
            let counts: Vec<Count> = (0..n).map(|r| (start(r + 1) - start(r)) as Count).collect();
            let d = displs(&counts);
            let me = self.rank;
            let mine = counts[me] as usize;
            let mut got = vec![0f32; mine * n];
            {
                let recv_counts = vec![mine as Count; n];
                let rd = displs(&recv_counts);
                let s = Partition::new(&buf[..], &counts[..], &d[..]);
                let mut r = PartitionMut::new(&mut got[..], &recv_counts[..], &rd[..]);
                w.all_to_all_varcount_into(&s, &mut r);
            }
            let mut sum = got[..mine].to_vec();
            for piece in got[mine..].chunks_exact(mine.max(1)) {
                for (a, b) in sum.iter_mut().zip(piece) {
                    *a += b;
                }
            }
            {
                let mut part = PartitionMut::new(&mut buf[..], &counts[..], &d[..]);
                w.all_gather_varcount_into(&sum[..], &mut part);
            }
            count_sent(4 * (len - mine) + 4 * mine * (n - 1));
        }
        fn broadcast_bytes(&self, root: usize, bytes: Vec<u8>) -> Vec<u8> {
            let w = SimpleCommunicator::world();
            let r = w.process_at_rank(root as i32);
            let mut len = bytes.len() as u64;
            r.broadcast_into(&mut len);
            let mut buf = if self.rank == root {
                bytes
            } else {
                vec![0u8; len as usize]
            };
            r.broadcast_into(&mut buf[..]);
            if self.rank == root {
                count_sent(buf.len() * (self.size - 1));
            }
            buf
        }
        fn abort(&self, code: i32) -> ! {
            SimpleCommunicator::world().abort(code)
        }
    }
}

/// Holds MPI open while the binary runs; finalizes it when dropped.
#[cfg(feature = "mpi")]
pub struct MpiSession {
    _universe: mpi::environment::Universe,
}

/// Joins MPI's world (when started by `mpirun` or `srun`; a world of one otherwise) and makes it
/// this process's [`world`]. Call once, from the main thread, before any work; keep the returned
/// session until the end. A panic on any rank then aborts every rank.
#[cfg(feature = "mpi")]
pub fn mpi_world() -> crate::error::Result<MpiSession> {
    let (universe, _) =
        mpi::initialize_with_threading(mpi::Threading::Funneled).ok_or_else(|| {
            crate::error::Error::Other("MPI was already initialised in this process".into())
        })?;
    let comm = mpi_comm::MpiComm::new();
    let size = comm.size();
    set_world(Box::new(comm));
    if size > 1 {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            eprintln!(
                "error: rank {} panicked; ending every rank of the job",
                job().rank()
            );
            job().abort(101);
        }));
    }
    Ok(MpiSession {
        _universe: universe,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips() {
        let parts = vec![vec![1.0, -2.5], vec![], vec![f32::MAX]];
        assert_eq!(unpack_f32(&pack_f32(&parts)).unwrap(), parts);
        assert!(unpack_f32(&[1, 0, 0]).is_err());
    }

    #[test]
    fn single_sum_is_identity_and_local_is_single() {
        let mut v = vec![1.0f32, 2.0];
        world().sum_in_rank_order(&mut v);
        assert_eq!(v, vec![1.0, 2.0]);
        assert_eq!(local(|| world().size()), 1);
        assert!(writes_shared());
        assert_eq!(owner(5, 2), 1);
    }
}
