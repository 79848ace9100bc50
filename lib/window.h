/* window: placeholder, being written. */
#pragma once
