// Unit test of the torch-free CPU Sinkhorn core against a naive double-precision log-domain
// Sinkhorn (the same iteration as ops/reference.py::sinkhorn_ref). Run with `make ctest`.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "sinkhorn.h"

namespace {

int failures = 0;

void check(bool ok, const char* what, double got = 0, double want = 0) {
  if (!ok) {
    ++failures;
    std::printf("FAIL %s (got %g, want %g)\n", what, got, want);
  }
}

double lse(const std::vector<double>& x) {
  double m = -INFINITY;
  for (double v : x) m = std::max(m, v);
  double s = 0;
  for (double v : x) s += std::exp(v - m);
  return m + std::log(s);
}

// Naive log-domain Sinkhorn in double: exactly `iters` iterations (f update then g update).
void naive(const std::vector<float>& C, const std::vector<float>& la, const std::vector<float>& lb,
           int N, int M, double eps, int iters, std::vector<double>& f, std::vector<double>& g) {
  f.assign(N, 0.0);
  g.assign(M, 0.0);
  std::vector<double> t;
  for (int it = 0; it < iters; ++it) {
    for (int i = 0; i < N; ++i) {
      t.assign(M, 0.0);
      for (int j = 0; j < M; ++j) t[j] = (g[j] - C[i * M + j]) / eps;
      f[i] = eps * (la[i] - lse(t));
    }
    for (int j = 0; j < M; ++j) {
      t.assign(N, 0.0);
      for (int i = 0; i < N; ++i) t[i] = (f[i] - C[i * M + j]) / eps;
      g[j] = eps * (lb[j] - lse(t));
    }
  }
}

struct Case {
  int K, N, M;
  double rel_eps;  // eps relative to the mean cost
  int iters;
  bool uniform;
};

void run_case(const Case& c, std::mt19937& rng) {
  const int K = c.K, N = c.N, M = c.M;
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<float> ud(0.5f, 1.5f);
  std::vector<float> C(static_cast<size_t>(K) * N * M), la(K * N), lb(K * M);
  double mean = 0;
  for (int k = 0; k < K; ++k) {
    std::vector<float> x(N * 3), y(M * 3);
    for (auto& v : x) v = nd(rng);
    for (auto& v : y) v = nd(rng) + 0.5f;
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < M; ++j) {
        float s = 0;
        for (int d = 0; d < 3; ++d) s += (x[i * 3 + d] - y[j * 3 + d]) * (x[i * 3 + d] - y[j * 3 + d]);
        C[(static_cast<size_t>(k) * N + i) * M + j] = s;
        mean += s;
      }
    double sa = 0, sb = 0;
    std::vector<double> a(N), b(M);
    for (auto& v : a) sa += (v = c.uniform ? 1.0 : ud(rng));
    for (auto& v : b) sb += (v = c.uniform ? 1.0 : ud(rng));
    for (int i = 0; i < N; ++i) la[k * N + i] = static_cast<float>(std::log(a[i] / sa));
    for (int j = 0; j < M; ++j) lb[k * M + j] = static_cast<float>(std::log(b[j] / sb));
  }
  mean /= static_cast<double>(K) * N * M;
  const float eps = static_cast<float>(c.rel_eps * mean);
  std::vector<float> f(K * N, 0.f), g(K * M, 0.f), lp(static_cast<size_t>(K) * N * M), err(K);
  auto st = medshift::sinkhorn_log_cpu(C.data(), la.data(), lb.data(), f.data(), g.data(),
                                       lp.data(), err.data(), K, N, M, eps, c.iters, 0.f, 10, 2);
  check(st.n_iter == c.iters, "tol <= 0 runs exactly max_iter iterations", st.n_iter, c.iters);
  for (int k = 0; k < K; ++k) {
    std::vector<float> Ck(C.begin() + static_cast<size_t>(k) * N * M,
                          C.begin() + static_cast<size_t>(k + 1) * N * M);
    std::vector<float> lak(la.begin() + k * N, la.begin() + (k + 1) * N);
    std::vector<float> lbk(lb.begin() + k * M, lb.begin() + (k + 1) * M);
    std::vector<double> fr, gr;
    naive(Ck, lak, lbk, N, M, eps, c.iters, fr, gr);
    // fp32 vs double: the error grows with |C / eps|; compare potentials in units of eps.
    double scale = 1.0;
    for (float v : Ck) scale = std::max(scale, static_cast<double>(v) / eps);
    double df = 0, dlp = 0;
    bool finite = true;
    for (int i = 0; i < N; ++i) df = std::max(df, std::fabs(f[k * N + i] - fr[i]) / eps);
    for (int j = 0; j < M; ++j) df = std::max(df, std::fabs(g[k * M + j] - gr[j]) / eps);
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < M; ++j) {
        const double want = (fr[i] + gr[j] - Ck[i * M + j]) / eps;
        const float got = lp[(static_cast<size_t>(k) * N + i) * M + j];
        finite = finite && std::isfinite(got);
        dlp = std::max(dlp, std::fabs(got - want));
      }
    char what[160];
    std::snprintf(what, sizeof what, "K=%d N=%d M=%d eps=%g*mean: potentials (units of eps)", K, N,
                  M, c.rel_eps);
    check(df <= 2e-6 * scale + 1e-4, what, df, 2e-6 * scale);
    std::snprintf(what, sizeof what, "K=%d N=%d M=%d eps=%g*mean: log plan", K, N, M, c.rel_eps);
    check(dlp <= 4e-6 * scale + 1e-4, what, dlp, 4e-6 * scale);
    check(finite && std::isfinite(err[k]), "finite plan and error");
  }
}

void test_fast_exp() {
  double worst = 0;
  for (float x = -87.f; x <= 88.f; x += 0.0137f) {
    const double want = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(medshift::sinkhorn_fast_exp(x) - want) / want);
  }
  check(worst < 5e-7, "fast exp relative error", worst, 5e-7);
  const float lo = medshift::sinkhorn_fast_exp(-1000.f);
  check(lo > 0.f && std::isnormal(lo), "fast exp never returns a denormal", lo, 1e-38);
  check(medshift::sinkhorn_fast_exp(0.f) == 1.f, "fast exp(0) == 1", medshift::sinkhorn_fast_exp(0.f), 1);
}

void test_tol_and_tiny_eps(std::mt19937& rng) {
  const int K = 2, N = 40, M = 31;
  std::uniform_real_distribution<float> ud(0.f, 4.f);
  std::vector<float> C(K * N * M);
  for (auto& v : C) v = ud(rng);
  std::vector<float> la(K * N, -std::log(static_cast<float>(N))), lb(K * M, -std::log(static_cast<float>(M)));
  std::vector<float> f(K * N, 0.f), g(K * M, 0.f), lp(K * N * M), err(K);
  // tol > 0: stops at a multiple of check_every with every problem within tol.
  auto st = medshift::sinkhorn_log_cpu(C.data(), la.data(), lb.data(), f.data(), g.data(),
                                       lp.data(), err.data(), K, N, M, 1.f, 1000, 1e-5f, 10, 2);
  check(st.n_iter > 0 && st.n_iter < 1000 && st.n_iter % 10 == 0, "tol stops on a check", st.n_iter);
  check(err[0] <= 1e-5f && err[1] <= 1e-5f, "converged within tol", std::max(err[0], err[1]), 1e-5);
  // The same with a thread team per problem (N * M >= 2^17).
  {
    const int n = 380, m = 370;
    std::vector<float> Cb(2 * n * m), lab(2 * n, -std::log(static_cast<float>(n))),
        lbb(2 * m, -std::log(static_cast<float>(m))), fb(2 * n, 0.f), gb(2 * m, 0.f),
        lpb(2 * n * m), eb(2);
    for (auto& v : Cb) v = ud(rng);
    auto s2 = medshift::sinkhorn_log_cpu(Cb.data(), lab.data(), lbb.data(), fb.data(), gb.data(),
                                         lpb.data(), eb.data(), 2, n, m, 0.2f, 1000, 1e-4f, 10, 2);
    check(s2.n_iter > 0 && s2.n_iter < 1000 && s2.n_iter % 10 == 0, "team: tol stops on a check",
          s2.n_iter);
    check(eb[0] <= 1e-4f && eb[1] <= 1e-4f, "team: converged within tol", std::max(eb[0], eb[1]),
          1e-4);
  }
  // eps = 1e-4 x mean cost: finite everywhere, mass conserved.
  std::fill(f.begin(), f.end(), 0.f);
  std::fill(g.begin(), g.end(), 0.f);
  st = medshift::sinkhorn_log_cpu(C.data(), la.data(), lb.data(), f.data(), g.data(), lp.data(),
                                  err.data(), K, N, M, 2e-4f, 300, 0.f, 10, 2);
  bool finite = true;
  double mass = 0;
  for (int i = 0; i < N * M; ++i) finite = finite && std::isfinite(lp[i]), mass += std::exp(lp[i]);
  for (float v : f) finite = finite && std::isfinite(v);
  for (float v : g) finite = finite && std::isfinite(v);
  check(finite, "tiny eps: finite potentials and plan");
  check(std::fabs(mass - 1.0) < 1e-3, "tiny eps: plan mass 1", mass, 1.0);
  // max_iter = 0 returns the warm start and its plan.
  f.assign(K * N, 0.5f);
  st = medshift::sinkhorn_log_cpu(C.data(), la.data(), lb.data(), f.data(), g.data(), lp.data(),
                                  err.data(), K, N, M, 1.f, 0, 1e-5f, 10, 1);
  check(st.n_iter == 0 && f[3] == 0.5f, "max_iter = 0 keeps the warm start", f[3], 0.5);
  // Bad sizes are reported, not crashed on.
  st = medshift::sinkhorn_log_cpu(C.data(), la.data(), lb.data(), f.data(), g.data(), lp.data(),
                                  err.data(), K, 0, M, 1.f, 10, 0.f, 10, 1);
  check(st.n_iter == -1, "bad sizes give n_iter = -1", st.n_iter, -1);
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  test_fast_exp();
  const Case cases[] = {
      {1, 1, 1, 0.1, 20, true},    {1, 7, 5, 0.1, 50, true},   {3, 37, 53, 0.05, 100, false},
      {1, 130, 140, 1e-3, 60, false}, {2, 20, 9, 10.0, 20, true},
      // N * M >= 2^17: one thread team inside each problem (barriers, per-thread copies of u),
      // at a small eps so that kernel iterations, absorptions and log iterations all occur.
      {2, 400, 350, 2e-3, 40, false},
  };
  for (const Case& c : cases) run_case(c, rng);
  test_tol_and_tiny_eps(rng);
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("test_sinkhorn: all checks passed\n");
  return 0;
}
