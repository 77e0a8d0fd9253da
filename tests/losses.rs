//! Golden-value tests for every loss.
//!
//! Reference values were computed in float64 with this pure-Python snippet (no framework),
//! which implements exactly the PyTorch expressions in the comments:
//!
//! ```python
//! import math
//! s=[[1.0,2.0,0.5],[0.3,-1.2,2.2]]; t=[[2.0,1.0,0.1],[0.0,0.5,3.0]]; y=[1,2]
//! def sm(z,T=1.0):
//!     m=max(z); e=[math.exp((v-m)/T) for v in z]; S=sum(e); return [v/S for v in e]
//! def lsm(z,T=1.0): return [math.log(p) for p in sm(z,T)]
//! def kd(T,a):
//!     b=len(s)
//!     # F.kl_div(F.log_softmax(s/T,1), F.softmax(t/T,1), reduction="batchmean")
//!     kl=sum(sum(p*(math.log(p)-lq) for p,lq in zip(sm(t[i],T),lsm(s[i],T))) for i in range(b))/b
//!     # F.cross_entropy(s, y)
//!     ce=-sum(lsm(s[i])[y[i]] for i in range(b))/b
//!     loss=a*T*T*kl+(1-a)*ce
//!     # d loss / d s  (what loss.backward() gives in PyTorch)
//!     grad=[[(a*T*(q-p)+(1-a)*(r-(1 if k==y[i] else 0)))/b
//!            for k,(q,p,r) in enumerate(zip(sm(s[i],T),sm(t[i],T),sm(s[i])))] for i in range(b)]
//!     return loss,kl,ce,grad
//! ps=[0.5,-1.0,2.0]; pt=[0.7,-0.5,1.0]; yy=[1.0,-1.5,2.5]; a=0.3
//! mse=lambda u,v: sum((x-z)**2 for x,z in zip(u,v))/len(u)
//! print(a*mse(ps,pt)+(1-a)*mse(ps,yy))   # a*F.mse_loss(ps,pt)+(1-a)*F.mse_loss(ps,yy)
//! ```
//!
//! The same values come out of PyTorch 2.15.0 in float64 (checked to 1e-15):
//!
//! ```python
//! import torch, torch.nn.functional as F
//! torch.set_default_dtype(torch.float64)
//! s=torch.tensor([[1.0,2.0,0.5],[0.3,-1.2,2.2]],requires_grad=True)
//! t=torch.tensor([[2.0,1.0,0.1],[0.0,0.5,3.0]]); y=torch.tensor([1,2])
//! for T,a in [(2.0,0.7),(20.0,0.9),(1.0,1.0),(4.0,0.0)]:
//!     s.grad=None
//!     kl=F.kl_div(F.log_softmax(s/T,1),F.softmax(t/T,1),reduction='batchmean')
//!     loss=a*T*T*kl+(1-a)*F.cross_entropy(s,y); loss.backward()
//!     print(T,a,loss.item(),s.grad.flatten().tolist())
//! ps=torch.tensor([0.5,-1.0,2.0]); pt=torch.tensor([0.7,-0.5,1.0]); yy=torch.tensor([1.0,-1.5,2.5])
//! print((0.3*F.mse_loss(ps,pt)+0.7*F.mse_loss(ps,yy)).item())   # 0.304
//! ```

mod common;
use candle_core::{Device, Tensor, Var};
use common::{close, grad_of};
use distillery::losses;

const S: [f32; 6] = [1.0, 2.0, 0.5, 0.3, -1.2, 2.2];
const T: [f32; 6] = [2.0, 1.0, 0.1, 0.0, 0.5, 3.0];

fn student() -> Var {
    Var::from_tensor(&Tensor::from_slice(&S, (2, 3), &Device::Cpu).unwrap()).unwrap()
}
fn labels() -> Tensor {
    Tensor::from_slice(&[1u32, 2], 2, &Device::Cpu).unwrap()
}

#[test]
fn cross_entropy_golden() {
    let l = losses::cross_entropy(student().as_tensor(), &labels()).unwrap();
    close(
        l.to_scalar::<f32>().unwrap() as f64,
        0.31618662316395996,
        1e-6,
    );
}

#[test]
fn mse_golden() {
    let a = Tensor::from_slice(&[0.5f32, -1.0, 2.0], (3, 1), &Device::Cpu).unwrap();
    let b = Tensor::from_slice(&[1.0f32, -1.5, 2.5], (3, 1), &Device::Cpu).unwrap();
    // (0.25 + 0.25 + 0.25) / 3
    close(
        losses::mse(&a, &b).unwrap().to_scalar::<f32>().unwrap() as f64,
        0.25,
        1e-7,
    );
}

fn check_kd(temperature: f32, alpha: f32, loss_ref: f64, grad_ref: [f64; 6]) {
    let s = student();
    let l =
        losses::kd_loss_classification(s.as_tensor(), &T, &labels(), temperature, alpha).unwrap();
    // f32 tolerance: at high T the KL is a small difference of O(1) log-probabilities, scaled
    // by T²; each element carries ~1e-7 relative rounding, so allow 3e-8·T² absolute.
    let tol = 2e-6f64.max(3e-8 * (temperature as f64).powi(2));
    close(l.to_scalar::<f32>().unwrap() as f64, loss_ref, tol);
    let g = grad_of(&l, &s);
    for (a, b) in g.iter().zip(grad_ref) {
        close(*a as f64, b, 2e-6);
    }
}

#[test]
fn hinton_kd_t2_alpha07() {
    check_kd(
        2.0,
        0.7,
        0.2977254201103018,
        [
            -0.11226867070978869,
            0.06799443776465322,
            0.04427423294513552,
            0.08799836976289191,
            -0.04713597707939037,
            -0.04086239268350137,
        ],
    );
}

#[test]
fn hinton_kd_t20_alpha09() {
    check_kd(
        20.0,
        0.9,
        0.3365013272187368,
        [
            -0.16097687714650255,
            0.1147924566584938,
            0.04618442048800876,
            0.15532753661567847,
            -0.1358770669211645,
            -0.019450469694513948,
        ],
    );
}

#[test]
fn hinton_kd_pure_soft_targets_is_kl() {
    // alpha = 1, T = 1: the loss is exactly KL(p_t || p_s) (batchmean).
    check_kd(
        1.0,
        1.0,
        0.2427481282448275,
        [
            -0.21388862063190942,
            0.19304937425352425,
            0.02083924637838515,
            0.04122568066078251,
            -0.022154674916339136,
            -0.019071005744443315,
        ],
    );
}

#[test]
fn hinton_kd_alpha0_is_cross_entropy() {
    check_kd(
        4.0,
        0.0,
        0.31618662316395996,
        [
            0.11561194881107453,
            -0.18573414039411879,
            0.07012219158304424,
            0.06321892080681143,
            0.014106047924034732,
            -0.07732496873084616,
        ],
    );
}

#[test]
fn kd_regression_golden() {
    let d = &Device::Cpu;
    let s = Tensor::from_slice(&[0.5f32, -1.0, 2.0], (3, 1), d).unwrap();
    let t = Tensor::from_slice(&[0.7f32, -0.5, 1.0], (3, 1), d).unwrap();
    let y = Tensor::from_slice(&[1.0f32, -1.5, 2.5], (3, 1), d).unwrap();
    let l = losses::kd_loss_regression(&s, &t, &y, 0.3).unwrap();
    close(l.to_scalar::<f32>().unwrap() as f64, 0.304, 1e-6);
}

#[test]
fn soft_targets_sum_to_one_and_soften() {
    let (p, _) = losses::soft_targets(&T, 3, 1.0);
    let (q, _) = losses::soft_targets(&T, 3, 20.0);
    for row in p.chunks(3).chain(q.chunks(3)) {
        close(row.iter().map(|&v| v as f64).sum(), 1.0, 1e-6);
    }
    // higher temperature → flatter distribution
    assert!(q[0] < p[0] && q[2] > p[2]);
}
