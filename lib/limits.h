/* limits: placeholder, being written. */
#pragma once
