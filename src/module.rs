//! Jacobians of TorchScript models (`tch::CModule`). (Work in progress.)
