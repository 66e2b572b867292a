// Everything of lathe::autograd in one include:  namespace ag = lathe::autograd;
#pragma once

#include "autograd/engine.h"
#include "autograd/function.h"
#include "autograd/grad_mode.h"
#include "autograd/gradcheck.h"
#include "autograd/hooks.h"
#include "autograd/module.h"
#include "autograd/ops.h"
