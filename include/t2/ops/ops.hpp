#pragma once
// All kernels.
